// SPDX-License-Identifier: GPL-2.0
/* Network: TCP connection lifecycle and counters, retransmits, UDP flows and DNS messages.
 *
 * - tp_btf/inet_sock_set_state: every TCP state change. Connections are tracked from the
 *   moment a process connects (SYN_SENT, in the process's context) or a listener accepts
 *   (attributed to the process that listens on the port); at close their final counters
 *   are read from the kernel's own struct tcp_sock, so bytes are never counted per send.
 * - iter/tcp: walked by user space every interval for the counters of connections that are
 *   still open.
 * - tp_btf/tcp_retransmit_skb: retransmits, aggregated per flow in the kernel.
 * - cgroup_skb ingress/egress on the root cgroup: UDP bytes and packets per flow, and DNS
 *   messages (UDP port 53) copied to user space for parsing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define RCV_SHUTDOWN 1
#define SEND_SHUTDOWN 2

/* Set by user space before load. */
const volatile __u32 capture_dns = 1;

struct conn_owner {
	__u64 start_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u16 local_port;      /* set once established: the kernel releases the port before close */
	__u8 role;
	__u8 _pad;
	char comm[OTELBPF_COMM_LEN];
};

/* Connections being tracked, by kernel socket address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct conn_owner);
} conns SEC(".maps");

struct listener_key {
	__u16 family;
	__u16 port;
};

/* Who listens on which port: accepted connections belong to that process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listener_key);
	__type(value, struct conn_owner);
} listeners SEC(".maps");

/* Listening socket -> its key: by the time a listener closes, the kernel has released its port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct listener_key);
} listener_socks SEC(".maps");

/* Per-flow aggregates (UDP bytes and packets, TCP retransmits), drained in batches. A plain
 * hash rather than an LRU: an LRU would evict silently, this one counts what did not fit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* Socket cookie -> process, learned when a UDP socket sends, to attribute what it receives. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} cookie_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} conn_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} dns_events SEC(".maps");

/* What was lost, per CPU: [0] a ring buffer was full, [1] conns full, [2] flows full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} network_drops SEC(".maps");

struct dns_scratch {
	struct dns_event event;
	__u8 payload[OTELBPF_DNS_PAYLOAD];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_scratch);
} dns_scratch_map SEC(".maps");

/* Keep the user-space-facing structs in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_event);
} conn_event_layout SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_sample);
} conn_sample_layout SEC(".maps");

enum { DROP_RING = 0, DROP_CONNS = 1, DROP_FLOWS = 2 };

static __always_inline void count_drop(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&network_drops, &what);

	if (n)
		*n += 1;
}

static __always_inline void read_endpoints(const struct sock *sk, struct flow_endpoints *f)
{
	f->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	f->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	f->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	f->proto = IPPROTO_TCP;
	if (f->family == AF_INET6) {
		/* Sized explicitly: BPF_CORE_READ_INTO would copy sizeof(*dst), one byte. */
		bpf_core_read(f->local_addr, sizeof(f->local_addr), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(f->peer_addr, sizeof(f->peer_addr), &sk->__sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO((__u32 *)f->local_addr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)f->peer_addr, sk, __sk_common.skc_daddr);
	}
}

static __always_inline void read_counters(const struct sock *sk, struct tcp_counters *c)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u8 shutdown;

	c->bytes_acked = BPF_CORE_READ(tp, bytes_acked);
	c->bytes_received = BPF_CORE_READ(tp, bytes_received);
	c->bytes_retrans = BPF_CORE_READ(tp, bytes_retrans);
	c->segs_out = BPF_CORE_READ(tp, segs_out);
	c->segs_in = BPF_CORE_READ(tp, segs_in);
	c->total_retrans = BPF_CORE_READ(tp, total_retrans);
	c->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	shutdown = BPF_CORE_READ(sk, sk_shutdown);
	c->flags = 0;
	if (shutdown & RCV_SHUTDOWN)
		c->flags |= TCP_FIN_RECEIVED;
	if ((shutdown & SEND_SHUTDOWN) && BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		c->flags |= TCP_FIN_ACKED;
}

static __always_inline void current_owner(struct conn_owner *o, __u8 role)
{
	o->start_ns = bpf_ktime_get_ns();
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->role = role;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline void emit(const struct sock *sk, __u32 type, const struct conn_owner *o,
				 int old_state, int with_counters, const struct listener_key *lk)
{
	struct conn_event e = {};

	e.ktime_ns = bpf_ktime_get_ns();
	e.sock = (__u64)sk;
	e.type = type;
	e.old_state = old_state;
	e.sk_err = BPF_CORE_READ(sk, sk_err);
	read_endpoints(sk, &e.flow);
	if (lk) {
		e.flow.family = lk->family;
		e.flow.local_port = lk->port;
	} else if (o && !e.flow.local_port) {
		e.flow.local_port = o->local_port;
	}
	if (with_counters)
		read_counters(sk, &e.counters);
	if (o) {
		e.start_ns = o->start_ns;
		e.cgroup_id = o->cgroup_id;
		e.pid = o->pid;
		e.role = o->role;
		__builtin_memcpy(e.comm, o->comm, sizeof(e.comm));
	}
	if (bpf_ringbuf_output(&conn_events, &e, sizeof(e), 0))
		count_drop(DROP_RING);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_tcp_state, const struct sock *sk, const int old_state, const int new_state)
{
	__u64 key = (__u64)sk;
	struct conn_owner owner = {}, *o;
	struct listener_key lk;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	if (new_state == TCP_SYN_SENT) {
		/* connect(): we are in the connecting process. */
		current_owner(&owner, ROLE_CLIENT);
		if (bpf_map_update_elem(&conns, &key, &owner, BPF_ANY))
			count_drop(DROP_CONNS);
		return 0;
	}

	if (new_state == TCP_LISTEN) {
		lk.family = BPF_CORE_READ(sk, __sk_common.skc_family);
		lk.port = BPF_CORE_READ(sk, __sk_common.skc_num);
		current_owner(&owner, ROLE_SERVER);
		bpf_map_update_elem(&listeners, &lk, &owner, BPF_ANY);
		bpf_map_update_elem(&listener_socks, &key, &lk, BPF_ANY);
		emit(sk, CONN_LISTEN, &owner, old_state, 0, &lk);
		return 0;
	}
	if (old_state == TCP_LISTEN) {
		/* LISTEN -> SYN_RECV is a new child socket cloned from the listener: nothing to do. */
		struct listener_key *known = bpf_map_lookup_elem(&listener_socks, &key);

		if (new_state != TCP_CLOSE || !known)
			return 0;
		lk = *known;
		emit(sk, CONN_UNLISTEN, bpf_map_lookup_elem(&listeners, &lk), old_state, 0, &lk);
		bpf_map_delete_elem(&listeners, &lk);
		bpf_map_delete_elem(&listener_socks, &key);
		return 0;
	}

	if (new_state == TCP_ESTABLISHED) {
		if (old_state == TCP_SYN_SENT) {
			o = bpf_map_lookup_elem(&conns, &key);
			if (o)
				o->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
		} else if (old_state == TCP_SYN_RECV) {
			/* A connection a listener accepted (softirq: the listener's process owns it). */
			lk.family = BPF_CORE_READ(sk, __sk_common.skc_family);
			lk.port = BPF_CORE_READ(sk, __sk_common.skc_num);
			o = bpf_map_lookup_elem(&listeners, &lk);
			if (o)
				owner = *o; /* else a listener older than us: user space names its process */
			owner.start_ns = bpf_ktime_get_ns();
			owner.role = ROLE_SERVER;
			owner.local_port = lk.port;
			if (bpf_map_update_elem(&conns, &key, &owner, BPF_ANY))
				count_drop(DROP_CONNS);
		}
		return 0;
	}

	if (new_state == TCP_CLOSE) {
		o = bpf_map_lookup_elem(&conns, &key);
		if (!o)
			return 0; /* not ours: opened before the agent started */
		emit(sk, old_state == TCP_SYN_SENT || old_state == TCP_SYN_RECV ? CONN_FAILED : CONN_CLOSE,
		     o, old_state, 1, NULL);
		bpf_map_delete_elem(&conns, &key);
	}
	return 0;
}

enum { FLOW_TX = 1, FLOW_RX = 2, FLOW_RETRANS = 4 };

/* One packet (or retransmit) of a flow; the direction is said, not inferred from the byte
 * count, so that empty datagrams count as packets too. */
static __always_inline void add_to_flow(struct flow_key *k, __u32 direction, __u64 bytes)
{
	struct flow_value *v = bpf_map_lookup_elem(&flows, k);
	struct flow_value init = {};

	if (!v) {
		if (bpf_map_update_elem(&flows, k, &init, BPF_NOEXIST) && bpf_map_lookup_elem(&flows, k) == NULL) {
			count_drop(DROP_FLOWS);
			return;
		}
		v = bpf_map_lookup_elem(&flows, k);
		if (!v)
			return;
	}
	if (direction == FLOW_TX) {
		__sync_fetch_and_add(&v->tx_bytes, bytes);
		__sync_fetch_and_add(&v->tx_packets, 1);
	} else if (direction == FLOW_RX) {
		__sync_fetch_and_add(&v->rx_bytes, bytes);
		__sync_fetch_and_add(&v->rx_packets, 1);
	} else {
		__sync_fetch_and_add(&v->retransmits, 1);
	}
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 key = (__u64)sk;
	struct flow_key fk = {};
	struct conn_owner *o = bpf_map_lookup_elem(&conns, &key);

	read_endpoints(sk, &fk.flow);
	fk.pid = o ? o->pid : 0;
	add_to_flow(&fk, FLOW_RETRANS, 0);
	return 0;
}

SEC("iter/tcp")
int sample_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	const struct sock *sk = (const struct sock *)skc;
	struct conn_sample s = {};
	__u8 state;

	if (!skc)
		return 0;
	state = skc->skc_state;
	s.sock = (__u64)skc;
	s.tracked = bpf_map_lookup_elem(&conns, &s.sock) != NULL;
	/* Tracked sockets in any state (so user space can tell which are gone); others only
	 * when they are worth adopting. */
	if (!s.tracked && state != TCP_ESTABLISHED && state != TCP_LISTEN)
		return 0;
	s.state = state;
	s.inode = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	read_endpoints(sk, &s.flow);
	if (state == TCP_ESTABLISHED)
		read_counters(sk, &s.counters);
	bpf_seq_write(ctx->meta->seq, &s, sizeof(s));
	return 0;
}

/* --- UDP flows and DNS, on the packet path ----------------------------------------------- */

static __always_inline int load_udp(struct __sk_buff *skb, struct flow_endpoints *f, __u32 *payload_off,
				    int egress)
{
	__u8 *src = egress ? f->local_addr : f->peer_addr;
	__u8 *dst = egress ? f->peer_addr : f->local_addr;
	struct udphdr udp;
	__u32 off;

	__u8 proto;

	/* Most packets are TCP: look at the one protocol byte before loading a whole header. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, offsetof(struct iphdr, protocol), &proto, 1) || proto != IPPROTO_UDP)
			return -1;
		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return -1;
		__builtin_memcpy(src, &ip.saddr, 4);
		__builtin_memcpy(dst, &ip.daddr, 4);
		f->family = AF_INET;
		off = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, offsetof(struct ipv6hdr, nexthdr), &proto, 1) || proto != IPPROTO_UDP)
			return -1;
		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(src, &ip6.saddr, 16);
		__builtin_memcpy(dst, &ip6.daddr, 16);
		f->family = AF_INET6;
		off = sizeof(ip6);
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
		return -1;
	f->proto = IPPROTO_UDP;
	f->local_port = bpf_ntohs(egress ? udp.source : udp.dest);
	f->peer_port = bpf_ntohs(egress ? udp.dest : udp.source);
	*payload_off = off + sizeof(udp);
	return 0;
}

static __always_inline void capture_dns_message(struct __sk_buff *skb, const struct flow_endpoints *f,
						__u32 off, __u32 pid, __u64 cookie, int egress)
{
	__u32 zero = 0;
	struct dns_scratch *s = bpf_map_lookup_elem(&dns_scratch_map, &zero);

	__u64 total = skb->len, start = off, len;

	if (!s || total <= start)
		return;
	/* 64-bit arithmetic, so the verifier keeps the bounds it is shown here. */
	len = total - start;
	if (len > OTELBPF_DNS_PAYLOAD)
		len = OTELBPF_DNS_PAYLOAD;
	barrier_var(len);
	if (len < 1 || bpf_skb_load_bytes(skb, off, s->payload, len))
		return;
	s->event.ktime_ns = bpf_ktime_get_ns();
	s->event.cookie = cookie;
	s->event.flow = *f;
	s->event.pid = pid;
	s->event.payload_len = len;
	s->event.egress = egress;
	if (bpf_ringbuf_output(&dns_events, s, sizeof(struct dns_event) + len, 0))
		count_drop(DROP_RING);
}

static __always_inline void on_packet(struct __sk_buff *skb, int egress)
{
	struct flow_key fk = {};
	__u32 off, *known;
	__u64 cookie;

	if (load_udp(skb, &fk.flow, &off, egress))
		return; /* TCP and the rest: counted from the socket, not per packet */
	cookie = bpf_get_socket_cookie(skb);
	if (egress) {
		/* Sending runs in the sender's context: learn who owns this socket. */
		fk.pid = bpf_get_current_pid_tgid() >> 32;
		if (fk.pid)
			bpf_map_update_elem(&cookie_pids, &cookie, &fk.pid, BPF_ANY);
	} else {
		known = bpf_map_lookup_elem(&cookie_pids, &cookie);
		fk.pid = known ? *known : 0;
	}
	/* Payload bytes, as for TCP: what the application sent or received. */
	add_to_flow(&fk, egress ? FLOW_TX : FLOW_RX, skb->len - off);
	if (capture_dns && (fk.flow.peer_port == 53 || fk.flow.local_port == 53))
		capture_dns_message(skb, &fk.flow, off, fk.pid, cookie, egress);
}

/* A UDP socket's creator, in its own context: names receive-only sockets too. */
SEC("cgroup/sock_create")
int on_sock_create(struct bpf_sock *sk)
{
	__u64 cookie;
	__u32 pid;

	if (sk->protocol != IPPROTO_UDP)
		return 1;
	cookie = bpf_get_socket_cookie(sk);
	pid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&cookie_pids, &cookie, &pid, BPF_ANY);
	return 1; /* observe only: never refuse a socket */
}

SEC("cgroup_skb/egress")
int on_egress(struct __sk_buff *skb)
{
	on_packet(skb, 1);
	return 1; /* observe only: always let the packet through */
}

SEC("cgroup_skb/ingress")
int on_ingress(struct __sk_buff *skb)
{
	on_packet(skb, 0);
	return 1;
}
