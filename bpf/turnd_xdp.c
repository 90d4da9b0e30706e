// SPDX-License-Identifier: (MIT OR Apache-2.0)
// turnd's XDP fast path (issue 13, first landing: IPv4 UDP ChannelData, both directions).
//
// The engine in user space stays the authority: turnd writes the routes it derives
// (ChannelBind + permission) into `fwd` and `rev`, and removes them when the engine does.
// This program only relays packets that match a route exactly; everything else, and every
// packet it is unsure about, goes to the kernel stack unchanged (XDP_PASS):
//   - not IPv4 (IPv6 in this landing, VLAN tags, ARP), IP options, fragments, not UDP;
//   - a UDP length that disagrees with the IP length, a ChannelData length past the end;
//   - no route for (client, listener, channel) or (peer, relay);
//   - no usable next hop (bpf_fib_lookup: no neighbour entry yet, forwarding disabled,
//     an egress interface that is not in `ifaces`) or a result larger than the MTU.
// Checksums: the IPv4 header checksum is computed anew; the UDP checksum is set to 0
// ("no checksum", allowed for UDP over IPv4 by RFC 768 / RFC 1122). The incoming UDP
// checksum is not verified (the link's CRC covers the hop; WebRTC media and data are
// authenticated end to end by SRTP/DTLS).
// Built by build.rs with `clang -O2 -target bpf` when the cargo feature `xdp` is on.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

#define MAX_ROUTES 65536
#define CHANNEL_MIN 0x4000
#define CHANNEL_MAX 0x7FFF
#define HDRS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

// All addresses and ports in network byte order, as on the wire.
struct fwd_key {
	__u32 client_ip;
	__u32 listen_ip;
	__u16 client_port;
	__u16 listen_port;
	__u16 channel;
	__u16 pad;
};

struct fwd_val {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
};

struct rev_key {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
};

struct rev_val {
	__u32 client_ip;
	__u32 listen_ip;
	__u16 client_port;
	__u16 listen_port;
	__u16 channel;
	__u16 pad;
};

// Packets and payload bytes (the ChannelData's application data, as the engine counts).
struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct fwd_key);
	__type(value, struct fwd_val);
} TURND_FWD SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
} TURND_REV SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct fwd_key);
	__type(value, struct counter);
} TURND_FWD_STATS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct rev_key);
	__type(value, struct counter);
} TURND_REV_STATS SEC(".maps");

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

static __always_inline int count_action(__u32 dir, __u32 act, int verdict)
{
	__u32 i = dir * 4 + act;
	__u64 *n = bpf_map_lookup_elem(&TURND_ACTIONS, &i);
	if (n)
		*n += 1;
	return verdict;
}

static __always_inline void count_route(void *map, void *key, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(map, key);
	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// The next hop for src -> dst leaving after a packet that came in on the context's
// interface: fills the MACs, returns the verdict (XDP_TX, XDP_REDIRECT) or -1 (pass).
static __always_inline int next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib,
				    __u32 src, __u32 dst, __u16 sport, __u16 dport,
				    __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len; // host order: the helper checks it against the egress MTU
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;
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

static __always_inline int finish(struct bpf_fib_lookup *fib, int verdict)
{
	// The egress interface was found in the devmap before the rewrite; should it have
	// gone meanwhile, the rewritten packet can only be dropped.
	if (verdict == XDP_REDIRECT)
		return bpf_redirect_map(&TURND_IFACES, fib->ifindex, 0) == XDP_REDIRECT ? XDP_REDIRECT
										       : XDP_DROP;
	return XDP_TX;
}

// ChannelData from a client: strip the 4-byte header (and any padding after the data),
// send the data from the relay address to the peer. -1: no route; else the verdict.
static __always_inline int to_peer(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				   struct udphdr *udp, __u16 channel, __u16 len)
{
	struct fwd_key k = {
		.client_ip = ip->saddr,
		.listen_ip = ip->daddr,
		.client_port = udp->source,
		.listen_port = udp->dest,
		.channel = bpf_htons(channel),
	};
	struct fwd_val *r = bpf_map_lookup_elem(&TURND_FWD, &k);
	if (!r)
		return -1; // no route: the caller goes on (the packet is untouched)
	struct fwd_val v = *r;
	__u16 tot = sizeof(struct iphdr) + sizeof(struct udphdr) + len;
	struct bpf_fib_lookup fib;
	int verdict = next_hop(ctx, &fib, v.relay_ip, v.peer_ip, v.relay_port, v.peer_port, tot);
	if (verdict < 0)
		return count_action(0, ACT_PASS, XDP_PASS);

	struct iphdr iph = *ip;
	// Drop what follows the data (padding, link-layer trailer), then the 4-byte header.
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	long excess = (long)(data_end - data) - (long)(HDRS + 4 + len);
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, (int)-excess))
		return count_action(0, ACT_DROP, XDP_DROP);
	if (bpf_xdp_adjust_head(ctx, 4))
		return count_action(0, ACT_DROP, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + HDRS > data_end)
		return count_action(0, ACT_DROP, XDP_DROP);
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	*ip = iph;
	ip->saddr = v.relay_ip;
	ip->daddr = v.peer_ip;
	ip->tot_len = bpf_htons(tot);
	ip->ttl = 64;
	ip->tos = 0; // as the relay's own sockets send (no DSCP/ECN carried over)
	ip->check = ip_checksum(ip);
	udp->source = v.relay_port;
	udp->dest = v.peer_port;
	udp->len = bpf_htons(sizeof(struct udphdr) + len);
	udp->check = 0;
	count_route(&TURND_FWD_STATS, &k, len);
	count_action(0, verdict == XDP_TX ? ACT_TX : ACT_REDIRECT, 0);
	return finish(&fib, verdict);
}

// A datagram from a peer to a relay port: prepend the ChannelData header, send it from the
// listener to the client (UDP clients only: no padding).
static __always_inline int to_client(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
				     struct udphdr *udp, __u16 len)
{
	struct rev_key k = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct rev_val *r = bpf_map_lookup_elem(&TURND_REV, &k);
	if (!r)
		return XDP_PASS;
	struct rev_val v = *r;
	if (len > 0xffff - sizeof(struct iphdr) - sizeof(struct udphdr) - 4)
		return count_action(1, ACT_PASS, XDP_PASS);
	__u16 tot = sizeof(struct iphdr) + sizeof(struct udphdr) + 4 + len;
	struct bpf_fib_lookup fib;
	int verdict = next_hop(ctx, &fib, v.listen_ip, v.client_ip, v.listen_port, v.client_port, tot);
	if (verdict < 0)
		return count_action(1, ACT_PASS, XDP_PASS);

	struct iphdr iph = *ip;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	long excess = (long)(data_end - data) - (long)(HDRS + len);
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, (int)-excess))
		return count_action(1, ACT_DROP, XDP_DROP);
	if (bpf_xdp_adjust_head(ctx, -4))
		return count_action(1, ACT_DROP, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + HDRS + 4 > data_end)
		return count_action(1, ACT_DROP, XDP_DROP);
	eth = data;
	ip = (void *)(eth + 1);
	udp = (void *)(ip + 1);
	__u16 *ch = (void *)(udp + 1);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	*ip = iph;
	ip->saddr = v.listen_ip;
	ip->daddr = v.client_ip;
	ip->tot_len = bpf_htons(tot);
	ip->ttl = 64;
	ip->tos = 0; // as the relay's own sockets send (no DSCP/ECN carried over)
	ip->check = ip_checksum(ip);
	udp->source = v.listen_port;
	udp->dest = v.client_port;
	udp->len = bpf_htons(sizeof(struct udphdr) + 4 + len);
	udp->check = 0;
	ch[0] = v.channel;
	ch[1] = bpf_htons(len);
	count_route(&TURND_REV_STATS, &k, len);
	count_action(1, verdict == XDP_TX ? ACT_TX : ACT_REDIRECT, 0);
	return finish(&fib, verdict);
}

SEC("xdp")
int turnd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
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
	__u16 plen = ulen - sizeof(struct udphdr);
	__u8 *p = (void *)(udp + 1);
	if (plen >= 4 && (void *)(p + 4) <= data_end) {
		__u16 channel = ((__u16)p[0] << 8) | p[1];
		__u16 len = ((__u16)p[2] << 8) | p[3];
		if (channel >= CHANNEL_MIN && channel <= CHANNEL_MAX && (__u32)len + 4 <= plen) {
			int verdict = to_peer(ctx, eth, ip, udp, channel, len);
			if (verdict >= 0)
				return verdict;
			// No route on a listener: it may still be a peer's datagram to a relay port.
		}
	}
	return to_client(ctx, eth, ip, udp, plen);
}

// For tests: the far end of a veth needs an XDP program of its own for XDP_TX frames to
// arrive there.
SEC("xdp")
int turnd_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
