// SPDX-License-Identifier: (MIT OR Apache-2.0)
// turnd's XDP fast path (issue 13): UDP ChannelData over IPv4 and IPv6, both directions.
//
// The engine in user space stays the authority: turnd writes the routes it derives
// (ChannelBind + permission) into `TURND_ROUTES`, and removes them when the engine does.
// This program only relays packets that match a route exactly; everything else, and every
// packet it is unsure about, goes to the kernel stack unchanged (XDP_PASS):
//   - neither IPv4 nor IPv6 (VLAN tags, ARP), IPv4 options, IPv4 fragments, IPv6 extension
//     headers (fragments included: the next header must be UDP), not UDP;
//   - a UDP length that disagrees with the IP length, a ChannelData length past the end,
//     an IPv6 UDP checksum of 0 (invalid on IPv6);
//   - no route for (client, listener, channel) or (peer, relay);
//   - a route whose other side is of the other family (v4 client, v6 peer or the reverse:
//     user space translates those);
//   - no usable next hop (bpf_fib_lookup: no neighbour entry yet, forwarding disabled,
//     an egress interface that is not in `ifaces`) or a result larger than the MTU.
// Over `[policy] max_bps_per_allocation` (TURND_CAP, per route direction): XDP_DROP.
// Checksums: the IPv4 header checksum is computed anew; the UDP checksum is updated
// incrementally (RFC 1624) from the incoming one over the words that change (addresses,
// ports, the UDP length twice, the ChannelData header removed or added, the padding
// removed); an incoming IPv4 UDP checksum of 0 ("none") stays 0. The incoming checksum is
// not verified: a wrong one stays wrong, and the receiver drops the datagram as it would.
// Built by build.rs with `clang -O2 -target bpf -mcpu=v3` when the cargo feature `xdp` is on.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define MAX_ROUTES 131072
#define CHANNEL_MIN 0x4000
#define CHANNEL_MAX 0x7FFF
// The largest ChannelData offset the program reads padding at (frames are at most a page).
#define MAX_PAYLOAD 0x3fff

// Addresses as 16 bytes, IPv4 ones v4-mapped (::ffff:a.b.c.d); all fields in network byte
// order, as on the wire.
struct addr {
	__u32 w[4];
};

// What a packet is matched by: its source and destination, and for ChannelData from a
// client the channel (0 for a peer's datagram to a relay port).
struct route_key {
	struct addr src;
	struct addr dst;
	__u16 sport;
	__u16 dport;
	__u16 channel;
	__u16 pad;
};

// Where it goes: from src to dst; `channel` not 0: prepend a ChannelData header (to a
// client), 0: strip it (to a peer). `slot`: the route's counters in TURND_COUNTS. `tat`:
// the cap's token bucket, kept as its theoretical arrival time in ns (GCRA), written only
// by the program.
struct route_val {
	struct addr src;
	struct addr dst;
	__u16 sport;
	__u16 dport;
	__u16 channel;
	__u16 pad;
	__u32 slot;
	__u32 pad2;
	__u64 tat;
};

// Packets and payload bytes (the ChannelData's application data, as the engine counts).
struct counter {
	__u64 packets;
	__u64 bytes;
	__u64 drops; // over the cap (folded into the engine's turnd_bandwidth_dropped_total)
};

// `[policy] max_bps_per_allocation` (0: none) and the burst it tolerates, in ns of the rate.
struct cap {
	__u64 bps;
	__u64 burst_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct route_key);
	__type(value, struct route_val);
} TURND_ROUTES SEC(".maps");

// Per route, at the slot user space gave it: mapped into turnd's memory, so folding the
// counts into the engine reads memory, not one syscall per route.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_ROUTES);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct counter);
} TURND_COUNTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cap);
} TURND_CAP SEC(".maps");

// Per direction (0 to_peer, 1 to_client) and action (0 tx, 1 redirect, 2 pass, 3 drop):
// packets that matched a route. Index direction * 4 + action.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} TURND_ACTIONS SEC(".maps");

// The interfaces turnd attached to, by ifindex: the egress interfaces XDP_REDIRECT may use.
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} TURND_IFACES SEC(".maps");

enum { ACT_TX = 0, ACT_REDIRECT = 1, ACT_PASS = 2, ACT_DROP = 3 };
enum { TO_PEER = 0, TO_CLIENT = 1 };

// The words the UDP checksum covers that a relay changes (RFC 1624 incremental update).
struct csum_words {
	struct addr src;
	struct addr dst;
	__u16 sport;
	__u16 dport;
	__u16 ulen_pseudo; // the pseudo-header's length
	__u16 ulen;	   // the UDP header's length
	__u16 channel;	   // the ChannelData header (0 where there is none)
	__u16 len;
	__u8 padding[4];   // padding bytes, at their offsets' parity
};

static __always_inline int count_action(__u32 dir, __u32 act, int verdict)
{
	__u32 i = dir * 4 + act;
	__u64 *n = bpf_map_lookup_elem(&TURND_ACTIONS, &i);
	if (n)
		*n += 1;
	return verdict;
}

static __always_inline void count_route(__u32 slot, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&TURND_COUNTS, &slot);
	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, bytes);
	}
}

static __always_inline void count_drop(__u32 slot)
{
	struct counter *c = bpf_map_lookup_elem(&TURND_COUNTS, &slot);
	if (c)
		__sync_fetch_and_add(&c->drops, 1);
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += w[i];
	return (__u16)~fold(sum);
}

static __always_inline int is_v4_mapped(const struct addr *a)
{
	return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0xffff);
}

// Over the cap: a virtual-time token bucket (GCRA) on the route's `tat`, lock-free.
// A packet conforms when the bucket's time is at most `burst_ns` ahead of now; it then
// advances the time by what its bytes take at the rate. Racing CPUs only ever add, so
// the long-run rate is exact; the burst may be exceeded by one packet per racing CPU.
static __always_inline int over_cap(struct route_val *r, __u32 bytes)
{
	__u32 zero = 0;
	struct cap *c = bpf_map_lookup_elem(&TURND_CAP, &zero);
	if (!c)
		return 0;
	__u64 bps = c->bps;
	if (bps == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 cost = (__u64)bytes * 8000000000ULL / bps;
	__u64 tat = *(volatile __u64 *)&r->tat;
	if (tat < now) // idle: the bucket is full (one try; a racing CPU moved it for us)
		__sync_val_compare_and_swap(&r->tat, tat, now);
	tat = __sync_fetch_and_add(&r->tat, cost);
	if (tat > now + c->burst_ns) {
		__sync_fetch_and_sub(&r->tat, cost);
		return 1;
	}
	return 0;
}

// The next hop for the route's src -> dst: fills the MACs, returns the verdict (XDP_TX,
// XDP_REDIRECT) or -1 (pass). `tot_len`: the packet's L3 length (checked against the MTU).
static __always_inline int next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				    const int v6, const struct route_val *v, __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = v->sport;
	fib->dport = v->dport;
	fib->tot_len = tot_len; // host order: the helper checks it against the egress MTU
	fib->ifindex = ctx->ingress_ifindex;
	if (v6) {
		fib->family = AF_INET6;
		__builtin_memcpy(fib->ipv6_src, v->src.w, 16);
		__builtin_memcpy(fib->ipv6_dst, v->dst.w, 16);
	} else {
		fib->family = AF_INET;
		fib->ipv4_src = v->src.w[3];
		fib->ipv4_dst = v->dst.w[3];
	}
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	__u32 ifindex = fib->ifindex;
	if (!bpf_map_lookup_elem(&TURND_IFACES, &ifindex))
		return -1;
	return XDP_REDIRECT;
}

// Relay a packet that matched route `r` (key `k`): `plen` the UDP payload's length, `len`
// the data's (ChannelData length to a peer, `plen` to a client). The packet is parsed and
// bounds-checked up to the first 4 payload bytes (to a peer) or the UDP header.
static __always_inline int relay(struct xdp_md *ctx, const int v6, const __u32 dir,
				 struct route_key *k, struct route_val *r, __u16 plen, __u16 len)
{
	struct route_val v = *r;
	// Both sides of the family the packet came in on; user space translates the others.
	if (is_v4_mapped(&v.src) == v6 || is_v4_mapped(&v.dst) == v6)
		return count_action(dir, ACT_PASS, XDP_PASS);
	const __u32 l3 = v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	const __u32 hdrs = sizeof(struct ethhdr) + l3 + sizeof(struct udphdr);
	__u32 npl = dir == TO_PEER ? len : (__u32)plen + 4; // the new UDP payload
	if (npl > 0xffff - l3 - sizeof(struct udphdr))
		return count_action(dir, ACT_PASS, XDP_PASS);
	__u16 nulen = sizeof(struct udphdr) + npl;
	struct bpf_fib_lookup fib;
	int verdict = next_hop(ctx, &fib, v6, &v, l3 + nulen);
	if (verdict < 0)
		return count_action(dir, ACT_PASS, XDP_PASS);
	if (over_cap(r, len)) {
		count_drop(v.slot);
		return count_action(dir, ACT_DROP, XDP_DROP);
	}

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + hdrs > data_end)
		return XDP_PASS;
	struct udphdr *udp = data + sizeof(struct ethhdr) + l3;
	__u8 *p = (void *)(udp + 1);
	__u16 old_check = udp->check;
	__u16 ip_id = 0, ip_frag = 0;
	if (!v6) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		ip_id = ip->id;
		ip_frag = ip->frag_off;
	}

	// The UDP checksum, updated over the words that change (all in memory order).
	__u16 check = 0;
	if (old_check || v6) {
		struct csum_words from = {}, to = {};
		from.src = k->src;
		from.dst = k->dst;
		from.sport = k->sport;
		from.dport = k->dport;
		from.ulen_pseudo = from.ulen = bpf_htons(sizeof(struct udphdr) + plen);
		to.src = v.src;
		to.dst = v.dst;
		to.sport = v.sport;
		to.dport = v.dport;
		to.ulen_pseudo = to.ulen = bpf_htons(nulen);
		if (dir == TO_PEER) {
			from.channel = k->channel;
			from.len = bpf_htons(len);
			// The padding after the data goes too: up to 3 bytes, summed by position.
			__u32 off = 4 + (__u32)len;
			if (off > MAX_PAYLOAD)
				return count_action(dir, ACT_PASS, XDP_PASS);
			__u8 pad[3] = {};
#pragma unroll
			for (int j = 0; j < 3; j++) {
				__u32 o = off + j;
				if (o >= plen)
					break;
				// Bound the register actually used (clang may reuse an unchecked copy).
				asm volatile("" : "+r"(o));
				if (o > MAX_PAYLOAD)
					return count_action(dir, ACT_PASS, XDP_PASS);
				__u8 *b = p + o;
				if ((void *)(b + 1) > data_end)
					return count_action(dir, ACT_PASS, XDP_PASS);
				pad[j] = *b;
			}
			// Constant indices (the verifier takes no variable stack offsets here).
			if (off & 1) {
				from.padding[1] = pad[0];
				from.padding[2] = pad[1];
				from.padding[3] = pad[2];
			} else {
				from.padding[0] = pad[0];
				from.padding[1] = pad[1];
				from.padding[2] = pad[2];
			}
		} else {
			to.channel = v.channel;
			to.len = bpf_htons(plen);
		}
		__s64 d = bpf_csum_diff((__be32 *)&from, sizeof(from), (__be32 *)&to, sizeof(to),
					(__u16)~old_check);
		if (d < 0)
			return count_action(dir, ACT_PASS, XDP_PASS);
		check = ~fold((__u64)d);
		if (check == 0)
			check = 0xffff; // 0 means "no checksum"
	}

	// Drop what follows the data (padding, link-layer trailer), then strip or make room for
	// the 4-byte header: the data stays where it is, the headers move by 4.
	long keep = hdrs + (dir == TO_PEER ? 4 + (long)len : (long)plen);
	long excess = (long)(data_end - data) - keep;
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, (int)-excess))
		return count_action(dir, ACT_DROP, XDP_DROP);
	if (bpf_xdp_adjust_head(ctx, dir == TO_PEER ? 4 : -4))
		return count_action(dir, ACT_DROP, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + hdrs + 4 > data_end)
		return count_action(dir, ACT_DROP, XDP_DROP);

	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (v6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		// Version 6, traffic class and flow label 0 (as the relay's own sockets send).
		*(__u32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(nulen);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, v.src.w, 16);
		__builtin_memcpy(&ip6->daddr, v.dst.w, 16);
	} else {
		struct iphdr *ip = (void *)(eth + 1);
		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0; // as the relay's own sockets send (no DSCP/ECN carried over)
		ip->tot_len = bpf_htons(sizeof(struct iphdr) + nulen);
		ip->id = ip_id;
		ip->frag_off = ip_frag;
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->saddr = v.src.w[3];
		ip->daddr = v.dst.w[3];
		ip->check = ip_checksum(ip);
	}
	udp = data + sizeof(struct ethhdr) + l3;
	udp->source = v.sport;
	udp->dest = v.dport;
	udp->len = bpf_htons(nulen);
	udp->check = check;
	if (dir == TO_CLIENT) {
		__u16 *ch = (void *)(udp + 1);
		ch[0] = v.channel;
		ch[1] = bpf_htons(plen);
	}
	count_route(v.slot, len);
	count_action(dir, verdict == XDP_TX ? ACT_TX : ACT_REDIRECT, 0);
	// The egress interface was found in the devmap before the rewrite; should it have gone
	// meanwhile, the rewritten packet can only be dropped.
	if (verdict == XDP_REDIRECT)
		return bpf_redirect_map(&TURND_IFACES, fib.ifindex, 0) == XDP_REDIRECT ? XDP_REDIRECT
										      : XDP_DROP;
	return XDP_TX;
}

// A UDP datagram, parsed (`udp` and its `plen` payload bytes inside the packet): ChannelData
// from a client on a route goes to its peer; else a datagram from a peer on a route goes
// to its client.
static __always_inline int route(struct xdp_md *ctx, const int v6, struct route_key *k,
				 struct udphdr *udp, __u16 plen)
{
	void *data_end = (void *)(long)ctx->data_end;
	k->sport = udp->source;
	k->dport = udp->dest;
	__u8 *p = (void *)(udp + 1);
	if (plen >= 4 && (void *)(p + 4) <= data_end) {
		__u16 channel = ((__u16)p[0] << 8) | p[1];
		__u16 len = ((__u16)p[2] << 8) | p[3];
		if (channel >= CHANNEL_MIN && channel <= CHANNEL_MAX && (__u32)len + 4 <= plen) {
			k->channel = bpf_htons(channel);
			struct route_val *r = bpf_map_lookup_elem(&TURND_ROUTES, k);
			if (r)
				return relay(ctx, v6, TO_PEER, k, r, plen, len);
			// No route on a listener: it may still be a peer's datagram to a relay port.
			k->channel = 0;
		}
	}
	struct route_val *r = bpf_map_lookup_elem(&TURND_ROUTES, k);
	if (!r)
		return XDP_PASS;
	return relay(ctx, v6, TO_CLIENT, k, r, plen, plen);
}

SEC("xdp")
int turnd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	struct route_key k = {};
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		// IP options, fragments (MF or an offset), not UDP: user space.
		if (ip->ihl != 5 || ip->version != 4 || (ip->frag_off & bpf_htons(0x3fff)) ||
		    ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		__u16 tot = bpf_ntohs(ip->tot_len);
		__u16 ulen = bpf_ntohs(udp->len);
		if (ulen < sizeof(struct udphdr) || tot != sizeof(struct iphdr) + ulen ||
		    data + sizeof(struct ethhdr) + tot > data_end)
			return XDP_PASS;
		k.src.w[2] = k.dst.w[2] = bpf_htonl(0xffff);
		k.src.w[3] = ip->saddr;
		k.dst.w[3] = ip->daddr;
		return route(ctx, 0, &k, udp, ulen - sizeof(struct udphdr));
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		// Extension headers (a fragment header among them), not UDP: user space.
		if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		struct udphdr *udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return XDP_PASS;
		__u16 ulen = bpf_ntohs(udp->len);
		if (ulen < sizeof(struct udphdr) || bpf_ntohs(ip6->payload_len) != ulen ||
		    data + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + ulen > data_end)
			return XDP_PASS;
		if (udp->check == 0) // invalid on IPv6 (RFC 8200 §8.1): the stack decides
			return XDP_PASS;
		__builtin_memcpy(k.src.w, &ip6->saddr, 16);
		__builtin_memcpy(k.dst.w, &ip6->daddr, 16);
		return route(ctx, 1, &k, udp, ulen - sizeof(struct udphdr));
	}
	return XDP_PASS;
}

// For tests: the far end of a veth needs an XDP program of its own for XDP_TX frames to
// arrive there.
SEC("xdp")
int turnd_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
