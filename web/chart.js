// A small line chart on a <canvas> (no dependencies): a few named series of (x, y) points,
// axes with min/max labels, a legend, redrawn whole on every update. Sized to the canvas's
// CSS width, so it follows the layout on phones.
'use strict';

const turndChart = (() => {
  const COLORS = ['#1f6feb', '#1a7f37', '#9a6700', '#c62828', '#8250df'];

  /** A number as a short label: 0.123 -> 0.12, 1234 -> 1234, 12345 -> 12.3k. */
  function label(v) {
    if (!Number.isFinite(v)) return '';
    const a = Math.abs(v);
    if (a >= 10000) return `${(v / 1000).toFixed(1)}k`;
    if (a >= 100) return String(Math.round(v));
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, '');
    return v.toFixed(2).replace(/\.?0+$/, '') || '0';
  }

  /**
   * `new Chart(canvas, {unit, xUnit, max})`: `add(name, x, y)` appends a point (keeping the last
   * `max` per series), `draw()` repaints, `clear()` empties.
   */
  class Chart {
    constructor(canvas, { unit = '', xUnit = 's', max = 600 } = {}) {
      this.canvas = canvas;
      this.unit = unit;
      this.xUnit = xUnit;
      this.max = max;
      this.series = new Map();
      this.pending = false;
    }

    add(name, x, y) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) return;
      if (!this.series.has(name)) this.series.set(name, []);
      const pts = this.series.get(name);
      pts.push([x, y]);
      if (pts.length > this.max) pts.splice(0, pts.length - this.max);
      this.schedule();
    }

    clear() {
      this.series.clear();
      this.draw();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    draw() {
      const c = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = Math.max(120, c.clientWidth || 300);
      const h = Math.max(60, c.clientHeight || 120);
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr);
        c.height = Math.round(h * dpr);
      }
      const g = c.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      g.font = '11px system-ui, sans-serif';
      const all = [...this.series.values()].flat();
      const pad = { l: 40, r: 8, t: 16, b: 16 };
      const pw = w - pad.l - pad.r;
      const ph = h - pad.t - pad.b;
      g.strokeStyle = '#d9dee5';
      g.strokeRect(pad.l, pad.t, pw, ph);
      g.fillStyle = '#5f6b7a';
      if (!all.length) {
        g.fillText('no data yet', pad.l + 6, pad.t + ph / 2);
        return;
      }
      const x0 = Math.min(...all.map((p) => p[0]));
      let x1 = Math.max(...all.map((p) => p[0]));
      let y1 = Math.max(...all.map((p) => p[1]));
      if (x1 === x0) x1 = x0 + 1;
      if (y1 <= 0) y1 = 1;
      y1 *= 1.1;
      const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * pw;
      const Y = (y) => pad.t + ph - (Math.max(0, y) / y1) * ph;
      g.fillText(`${label(y1)} ${this.unit}`, 2, pad.t + 4);
      g.fillText('0', 2, pad.t + ph);
      g.fillText(`${label(x0)} ${this.xUnit}`, pad.l, h - 3);
      const right = `${label(x1)} ${this.xUnit}`;
      g.fillText(right, w - pad.r - g.measureText(right).width, h - 3);
      let lx = pad.l + 4;
      [...this.series.entries()].forEach(([name, pts], i) => {
        const color = COLORS[i % COLORS.length];
        g.strokeStyle = color;
        g.lineWidth = 1.5;
        g.beginPath();
        pts.forEach(([x, y], j) => (j ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
        g.stroke();
        if (pts.length === 1) { g.fillStyle = color; g.fillRect(X(pts[0][0]) - 2, Y(pts[0][1]) - 2, 4, 4); }
        g.fillStyle = color;
        g.fillText(name, lx, pad.t - 4);
        lx += g.measureText(name).width + 12;
      });
    }
  }

  return { Chart, label };
})();
