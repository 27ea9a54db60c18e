// SPDX-License-Identifier: GPL-2.0
/* HTTP/1.x capture from syscall tracepoints (Coroot's approach: no kprobes needed), and the
 * plaintext of TLS connections from uprobes on libssl.
 *
 * Two BTF raw tracepoints, sys_enter and sys_exit, dispatch on the syscall number:
 * - write, writev, sendto, sendmsg at entry: the buffer is there.
 * - read, readv, recvfrom, recvmsg at exit: the fd and buffer from the saved registers, the
 *   bytes the kernel filled in.
 * - close at entry: the end of a connection that carried HTTP (known by (tgid, fd): any other
 *   close costs one hash lookup).
 * Work per syscall is kept tiny and in this order: skip our own process and unselected ones,
 * then "is this fd a TCP socket" (task->files->fdt->fd[fd], S_ISSOCK, the socket's family),
 * then "is its peer the agent" (one array load unless the peer port is one of the agent's),
 * then "does the message start like HTTP/1.x" from its first bytes. Only then is anything
 * copied: the first `capture_bytes` bytes of a request into the connection's entry in
 * `pending`, and, when its response passes, both as one record into the ring buffer (see
 * "pairing in the kernel" below). Other socket traffic is counted, never copied.
 * - uprobes on SSL_read/SSL_write (and _ex): the same with the plaintext; the socket is the
 *   one the thread's syscall inside the SSL call used, remembered per SSL object.
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
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Set by user space before load. */
const volatile __u32 capture_bytes = 256;  /* up to OTELBPF_HTTP_MAX_CAPTURE */
const volatile __u32 self_pid = 0;        /* the agent: never traced (see "the agent's own traffic") */
const volatile __u32 filter_pids = 0;     /* 1: only processes in selected_pids */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} selected_pids SEC(".maps");

/* Sockets that carried HTTP, by (tgid << 32 | fd): a close is reported only for these, and a
 * close of any other fd (files, pipes) costs one hash lookup. */
struct http_sock {
	__u64 sock;            /* struct sock address */
	__u64 announced;       /* its endpoints went to user space (with its first record) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct http_sock);
} http_socks SEC(".maps");

/* An SSL call in progress on a thread. */
struct ssl_call {
	__u64 ssl;             /* SSL * */
	__u64 buf;
	__u64 num;             /* bytes asked for */
	__u64 out_len;         /* _ex variants: size_t * that receives the byte count */
	__u64 sock;            /* learned from the syscall made inside the call */
	__u64 ktime_ns;
	__u64 fd;              /* the fd of that syscall */
};

/* Entries in ssl_calls: while there are none, which is most of the time on most hosts, a
 * socket message needs no lookup there. */
__u64 ssl_calls_in_flight = 0;

/* The socket under an SSL object. */
struct ssl_sock {
	__u64 sock;
	__u64 fd;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);    /* pid_tgid */
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

/* SSL * -> struct sock address, for SSL_read calls served from OpenSSL's own buffer. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct ssl_sock);
} ssl_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} http_events SEC(".maps");

struct scratch {
	struct http_event event;
	__u8 payload[OTELBPF_HTTP_MAX_CAPTURE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* Per CPU: [0] ring buffer full, [1] socket messages that were not HTTP, [2] unused (was: reads
 * table full), [3] sendfile calls to sockets, [4] splice calls to sockets (counted, not parsed:
 * the bytes never pass through user memory), [5] messages on the far end of the agent's own
 * connections (left out: see "the agent's own traffic"). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 6);
	__type(key, __u32);
	__type(value, __u64);
} http_counts SEC(".maps");

enum { COUNT_RING_FULL = 0, COUNT_NOT_HTTP = 1, COUNT_READS_FULL = 2, COUNT_SENDFILE = 3, COUNT_SPLICE = 4,
       COUNT_SELF = 5 };

/* --- the agent's own traffic ----------------------------------------------------------------
 * The agent's process is skipped by pid. The far end of its connections is another process:
 * a collector on this host that takes the agent's exports would be traced, its spans exported,
 * that export traced again, without end. So every connection the agent sends or receives on
 * is noted here by its endpoints (the agent's side first), and user space adds the agent's
 * listeners (UI, receiver, Prometheus) with an all-zero peer. A socket whose peer is such an
 * endpoint belongs to the agent's traffic: its messages are counted, never captured. */
struct self_endpoint {
	__u8 addr[16];         /* the agent's side (IPv4 in the first 4 bytes); zero: any address */
	__u8 peer_addr[16];    /* the other side; zero (with peer_port 0): a listener */
	__u16 port;
	__u16 peer_port;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct self_endpoint);
	__type(value, __u8);
} self_endpoints SEC(".maps");

/* Endpoints in self_endpoints per agent-side port: everyone else's message costs one array
 * load (the verifier inlines it) to learn that its peer port is none of the agent's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} self_ports SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&http_counts, &what);

	if (n)
		*n += 1;
}

static __always_inline int is_agent(__u64 pid_tgid)
{
	return (__u32)(pid_tgid >> 32) == self_pid;
}

static __always_inline int selected(__u64 pid_tgid)
{
	__u32 pid = pid_tgid >> 32;

	if (pid == self_pid)
		return 0;
	return !filter_pids || bpf_map_lookup_elem(&selected_pids, &pid);
}

/* A kfunc the verifier turns into a plain move: it makes a pointer read from kernel memory a
 * typed (read-only, untrusted) one, so the walk below is direct loads instead of a
 * bpf_probe_read_kernel call per field. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define KERNEL_CAST(type, ptr) ((type *)bpf_rdonly_cast((const void *)(ptr), bpf_core_type_id_kernel(type)))

/* The struct sock behind fd when it is an IPv4/IPv6 socket, else 0. */
static __always_inline struct sock *socket_of(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	struct file *file = 0, *f;
	struct socket *socket;
	struct sock *sk;
	__u16 family;

	if (!fdt || fd >= fdt->max_fds)
		return 0;
	/* fdt->fd is an array of pointers: the one read the verifier cannot type. */
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	if (!file)
		return 0;
	f = KERNEL_CAST(struct file, file);
	if ((f->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	socket = KERNEL_CAST(struct socket, f->private_data);
	sk = socket->sk;
	if (!sk)
		return 0;
	family = sk->__sk_common.skc_family;
	return family == AF_INET || family == AF_INET6 ? sk : 0;
}

/* "GET ", "POST", "HTTP/1." ...: the first 8 bytes decide, as cheaply as a compare can. */
static __always_inline int looks_like_http(const char *p)
{
	switch (p[0]) {
	case 'G': return p[1] == 'E' && p[2] == 'T' && p[3] == ' ';
	case 'P': return (p[1] == 'O' && p[2] == 'S' && p[3] == 'T') ||
			 (p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
			 (p[1] == 'A' && p[2] == 'T' && p[3] == 'C');
	case 'H': return (p[1] == 'E' && p[2] == 'A' && p[3] == 'D') ||
			 (p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' && p[6] == '.');
	case 'D': return p[1] == 'E' && p[2] == 'L' && p[3] == 'E';
	case 'O': return p[1] == 'P' && p[2] == 'T' && p[3] == 'I';
	case 'C': return p[1] == 'O' && p[2] == 'N' && p[3] == 'N';
	case 'T': return p[1] == 'R' && p[2] == 'A' && p[3] == 'C';
	}
	return 0;
}

/* 16-byte addresses compared as four words (no memcmp in BPF); both are 4-aligned. */
static __always_inline int same_addr(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int is_loopback(const __u8 *addr, __u16 family)
{
	const __u32 *w = (const __u32 *)addr;

	if (family == AF_INET6)
		return !w[0] && !w[1] && !w[2] && w[3] == bpf_htonl(1);
	return addr[0] == 127;
}

/* This socket's endpoints as seen from the other end: its peer is the agent's side. */
static __always_inline __u16 far_end(struct sock *sk, struct self_endpoint *key, __u16 *family)
{
	struct sock_common *c = &KERNEL_CAST(struct sock, sk)->__sk_common;

	__builtin_memset(key, 0, sizeof(*key));
	*family = c->skc_family;
	key->port = bpf_ntohs(c->skc_dport);
	key->peer_port = c->skc_num;
	if (*family == AF_INET6) {
		bpf_core_read(key->addr, 16, &c->skc_v6_daddr);
		bpf_core_read(key->peer_addr, 16, &c->skc_v6_rcv_saddr);
	} else {
		*(__u32 *)key->addr = c->skc_daddr;
		*(__u32 *)key->peer_addr = c->skc_rcv_saddr;
	}
	return key->port;
}

/* Whether sk's peer is one of the agent's endpoints: a connection of the agent's, or a client
 * of one of its listeners (one bound to any address takes clients of this host only). */
static __always_inline int agent_traffic(struct sock *sk)
{
	struct self_endpoint key;
	__u32 port;
	__u32 *refs;
	__u16 family;
	__u32 local[4];

	port = bpf_ntohs(KERNEL_CAST(struct sock, sk)->__sk_common.skc_dport);
	refs = bpf_map_lookup_elem(&self_ports, &port);
	if (!refs || !*refs)
		return 0;
	far_end(sk, &key, &family);
	if (bpf_map_lookup_elem(&self_endpoints, &key))
		return 1;
	__builtin_memcpy(local, key.peer_addr, 16);
	__builtin_memset(key.peer_addr, 0, 16);
	key.peer_port = 0;
	if (bpf_map_lookup_elem(&self_endpoints, &key))
		return 1;
	if (!is_loopback(key.addr, family) && !same_addr(key.addr, (const __u8 *)local))
		return 0;  /* a remote peer: not a client of this host's agent */
	__builtin_memset(key.addr, 0, 16);
	return bpf_map_lookup_elem(&self_endpoints, &key) != 0;
}

/* The agent sends or receives on fd: note the connection (its side first) once. */
static __always_inline void note_agent_socket(struct sock *sk)
{
	struct self_endpoint key, mine = {};
	__u32 port;
	__u32 *refs;
	__u16 family;
	__u8 one = 1;

	if (!far_end(sk, &key, &family) || !key.peer_port)
		return;  /* not connected */
	__builtin_memcpy(mine.addr, key.peer_addr, 16);
	__builtin_memcpy(mine.peer_addr, key.addr, 16);
	mine.port = key.peer_port;
	mine.peer_port = key.port;
	if (bpf_map_lookup_elem(&self_endpoints, &mine) ||
	    bpf_map_update_elem(&self_endpoints, &mine, &one, BPF_NOEXIST))
		return;
	port = mine.port;
	refs = bpf_map_lookup_elem(&self_ports, &port);
	if (refs)
		__sync_fetch_and_add(refs, 1);
}

/* The agent closes fd: forget the connection (its port may go to another process). */
static __always_inline void forget_agent_socket(struct sock *sk)
{
	struct self_endpoint key, mine = {};
	__u32 port;
	__u32 *refs;
	__u16 family;

	if (!far_end(sk, &key, &family) || !key.peer_port)
		return;
	__builtin_memcpy(mine.addr, key.peer_addr, 16);
	__builtin_memcpy(mine.peer_addr, key.addr, 16);
	mine.port = key.peer_port;
	mine.peer_port = key.port;
	if (bpf_map_delete_elem(&self_endpoints, &mine))
		return;
	port = mine.port;
	refs = bpf_map_lookup_elem(&self_ports, &port);
	if (refs)
		__sync_fetch_and_add(refs, -1);
}

static __always_inline void read_endpoints(struct sock *sk, struct http_event *e)
{
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->family == AF_INET6) {
		bpf_core_read(e->local_addr, sizeof(e->local_addr), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->peer_addr, sizeof(e->peer_addr), &sk->__sk_common.skc_v6_daddr);
	} else {
		__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
		__builtin_memset(e->peer_addr, 0, sizeof(e->peer_addr));
		BPF_CORE_READ_INTO((__u32 *)e->local_addr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->peer_addr, sk, __sk_common.skc_daddr);
	}
}

/* Every record has one size (the header and capture_bytes, the tail unused past `captured`):
 * user space then takes a whole drain as one strided array instead of walking the records. */
static __always_inline __u32 record_size(void)
{
	__u32 n = capture_bytes;

	if (n > OTELBPF_HTTP_MAX_CAPTURE)
		n = OTELBPF_HTTP_MAX_CAPTURE;
	return sizeof(struct http_event) + n;
}

/* The bytes of a message of `size` that are copied: at most capture_bytes (a load-time
 * constant, so the verifier knows the bound) and never past the hard ceiling. */
static __always_inline __u32 capture_length(__u64 size)
{
	__u64 len = size;

	if (len > capture_bytes)
		len = capture_bytes;
	if (len > OTELBPF_HTTP_MAX_CAPTURE)
		len = OTELBPF_HTTP_MAX_CAPTURE;
	return len;
}

/* --- pairing in the kernel ---------------------------------------------------------------
 * A request is kept per connection until its response passes the other way; then the two go
 * to user space as one record (the request's bytes, both times and the response's status), so
 * the common case costs one record and no pairing in Python, and a full ring drops whole
 * exchanges, never half of one. Whatever is not that simple case turns the connection into a
 * pass-through one for the rest of its life, and its messages go one by one to user space,
 * which pairs them (sensors/http_tracker.py): a request while another waits (pipelining), a
 * 1xx or unreadable status line, and a server request on whose thread a client request is
 * sent before the response (user space needs the server span first to parent the client). */
enum { PENDING_EMPTY = 0, PENDING_REQUEST = 1, PENDING_PASSTHROUGH = 2 };

struct pending_key {
	__u64 sock;
	__u32 pid;
	__u32 _pad;
};

/* The value is this header and then capture_bytes of the request (user space sets the value
 * size before load, so there is no BTF type for it). */
struct pending {
	__u64 start_ns;
	__u32 tid;
	__u32 size;
	__u16 captured;
	__u8 direction;        /* of the request */
	__u8 source;
	__u8 state;
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(struct pending_key));
	__uint(value_size, sizeof(struct pending) + 256);
} pending SEC(".maps");

/* A thread's server request in progress (read, not yet answered). */
struct serving {
	__u64 sock;
	__u64 start_ns;
	__u32 fd;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct serving);
} serving_threads SEC(".maps");

/* Endpoints and the command name go with the first record of a connection (this fd, this
 * socket) only: later ones carry family 0 and user space takes them from that one. */
static __always_inline void submit(struct http_event *e, __u64 pid_tgid, struct sock *sk, __u32 fd)
{
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	struct http_sock *known, announced = { .sock = (__u64)sk, .announced = 1 };

	e->sock = (__u64)sk;
	e->pid = pid_tgid >> 32;
	e->fd = fd;
	known = bpf_map_lookup_elem(&http_socks, &key);
	if (!known || known->sock != (__u64)sk || !known->announced) {
		read_endpoints(sk, e);
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		bpf_ringbuf_submit(e, 0);
		/* only once the record carrying the endpoints is in the ring */
		bpf_map_update_elem(&http_socks, &key, &announced, BPF_ANY);
		return;
	}
	e->family = 0;
	e->comm[0] = 0;
	/* Flags 0: the reader is woken only when it had caught up (this record is the first
	 * unread one), once per drain of a reader that batches (sensors/http.py MIN_DRAIN_GAP). */
	bpf_ringbuf_submit(e, 0);
}

/* A connection whose first request is kept, not sent: its close must still be seen. */
static __always_inline void note_socket(__u64 pid_tgid, struct sock *sk, __u32 fd)
{
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	struct http_sock *known = bpf_map_lookup_elem(&http_socks, &key), fresh = { .sock = (__u64)sk };

	if (!known || known->sock != (__u64)sk)  /* a stale entry: the fd was closed at exit */
		bpf_map_update_elem(&http_socks, &key, &fresh, BPF_ANY);
}

static __always_inline struct http_event *reserve(void)
{
	struct http_event *e = bpf_ringbuf_reserve(&http_events, record_size(), 0);

	if (!e)
		count(COUNT_RING_FULL);
	return e;
}

/* One message as it is (the first `len` bytes at buf). */
static __always_inline void emit_message(__u64 pid_tgid, struct sock *sk, __u32 fd, const void *buf, __u64 size,
				    __u8 direction, __u8 source, __u64 ktime_ns)
{
	struct http_event *e;
	__u32 len = capture_length(size);

	barrier_var(len);
	e = reserve();
	if (!e)
		return;
	/* Straight into the ring: the size is a load-time constant, so the verifier knows it. */
	if (len < 1 || len > capture_bytes || bpf_probe_read_user((void *)(e + 1), len, buf)) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return;
	}
	e->ktime_ns = e->start_ns = ktime_ns;
	e->tid = (__u32)pid_tgid;
	e->size = size > 0xffffffff ? 0xffffffff : size;
	e->captured = len;
	e->direction = direction;
	e->source = source;
	e->status = 0;
	submit(e, pid_tgid, sk, fd);
}

/* The request a connection keeps, alone (pass-through) or with its response (an exchange). */
static __always_inline void emit_pending(__u64 pid_tgid, struct sock *sk, __u32 fd, struct pending *p,
				    __u8 direction, __u64 end_ns, __u16 status)
{
	struct http_event *e;
	__u32 len = capture_length(p->captured);

	barrier_var(len);
	e = reserve();
	if (!e)
		return;
	if (len < 1 || len > capture_bytes || bpf_probe_read_kernel((void *)(e + 1), len, (void *)(p + 1))) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return;
	}
	e->start_ns = p->start_ns;
	e->ktime_ns = end_ns;
	e->tid = p->tid;
	e->size = p->size;
	e->captured = len;
	e->direction = direction;
	e->source = p->source;
	e->status = status;
	submit(e, pid_tgid, sk, fd);
}

static __always_inline void pass_through(__u64 pid_tgid, struct sock *sk, __u32 fd, struct pending *p)
{
	if (p->state == PENDING_REQUEST)
		emit_pending(pid_tgid, sk, fd, p, p->direction, p->start_ns, 0);
	p->state = PENDING_PASSTHROUGH;
}

/* "HTTP/1.x NNN": the status code, or 0 when those bytes are not one. */
static __always_inline __u16 status_of(const char *head)
{
	__u16 code = 0;

	for (int i = 9; i < 12; i++) {
		if (head[i] < '0' || head[i] > '9')
			return 0;
		code = code * 10 + (head[i] - '0');
	}
	return head[8] == ' ' ? code : 0;
}

/* A client request on a thread that is serving a request of its own: user space must see that
 * server request first to make it the client span's parent, so it leaves the kernel alone. */
static __always_inline void release_serving_request(__u64 pid_tgid)
{
	struct serving *serving = bpf_task_storage_get(&serving_threads, bpf_get_current_task_btf(), 0, 0);
	struct pending_key key = { .pid = pid_tgid >> 32 };
	struct pending *p;

	if (!serving || !serving->sock)
		return;
	key.sock = serving->sock;
	p = bpf_map_lookup_elem(&pending, &key);
	if (p && p->state == PENDING_REQUEST && p->start_ns == serving->start_ns)
		pass_through(pid_tgid, (struct sock *)serving->sock, serving->fd, p);
	serving->sock = 0;
}

/* A request: kept for its response, or passed through. */
static __always_inline void on_request(__u64 pid_tgid, struct sock *sk, __u32 fd, const void *buf, __u64 size,
				       __u8 direction, __u8 source, __u64 ktime_ns, struct pending *p,
				       struct pending_key *key)
{
	__u32 zero = 0, len = capture_length(size);
	struct serving *serving;
	struct scratch *s;

	if (direction == HTTP_EGRESS)
		release_serving_request(pid_tgid);
	if (p && p->state == PENDING_REQUEST) {  /* pipelined: the first still waits */
		pass_through(pid_tgid, sk, fd, p);
		p = 0;
	}
	if (p && p->state == PENDING_PASSTHROUGH) {
		emit_message(pid_tgid, sk, fd, buf, size, direction, source, ktime_ns);
		return;
	}
	if (!p) {
		/* A new connection's entry, from zeroed per-CPU scratch (the value is too big for
		 * the stack); kept-alive connections reuse theirs in place. */
		s = bpf_map_lookup_elem(&scratch_map, &zero);
		if (!s)
			return;
		__builtin_memset(&s->event, 0, sizeof(struct pending));
		bpf_map_update_elem(&pending, key, s, BPF_ANY);
		p = bpf_map_lookup_elem(&pending, key);
		note_socket(pid_tgid, sk, fd);
		if (!p) {
			emit_message(pid_tgid, sk, fd, buf, size, direction, source, ktime_ns);
			return;
		}
	}
	barrier_var(len);
	if (len < 1 || len > capture_bytes || bpf_probe_read_user((void *)(p + 1), len, buf))
		return;
	p->start_ns = ktime_ns;
	p->tid = (__u32)pid_tgid;
	p->size = size > 0xffffffff ? 0xffffffff : size;
	p->captured = len;
	p->direction = direction;
	p->source = source;
	p->state = PENDING_REQUEST;
	if (direction == HTTP_INGRESS) {
		serving = bpf_task_storage_get(&serving_threads, bpf_get_current_task_btf(), 0,
					       BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (serving) {
			serving->sock = (__u64)sk;
			serving->start_ns = ktime_ns;
			serving->fd = fd;
		}
	}
}

/* A response: with the request its connection keeps, one exchange record. */
static __always_inline void on_response(__u64 pid_tgid, struct sock *sk, __u32 fd, const void *buf, __u64 size,
					__u8 direction, __u8 source, __u64 ktime_ns, struct pending *p,
					const char *head)
{
	__u16 status = status_of(head);
	struct serving *serving;

	if (p && p->state == PENDING_REQUEST && p->direction != direction && status >= 200) {
		emit_pending(pid_tgid, sk, fd, p,
			     direction == HTTP_EGRESS ? HTTP_SERVER_EXCHANGE : HTTP_CLIENT_EXCHANGE, ktime_ns, status);
		p->state = PENDING_EMPTY;
		if (direction == HTTP_EGRESS) {
			serving = bpf_task_storage_get(&serving_threads, bpf_get_current_task_btf(), 0, 0);
			if (serving && serving->sock == (__u64)sk)
				serving->sock = 0;
		}
		return;
	}
	if (p)  /* 1xx, an unreadable status or no request kept: user space sorts it out */
		pass_through(pid_tgid, sk, fd, p);
	emit_message(pid_tgid, sk, fd, buf, size, direction, source, ktime_ns);
}

/* A socket message at buf (size bytes): counted when it does not start like HTTP, else paired
 * or passed on. */
static __always_inline void emit(__u64 pid_tgid, struct sock *sk, __u32 fd, const void *buf, __u64 size,
				 __u8 direction, __u8 source, __u64 ktime_ns)
{
	struct pending_key key = { .sock = (__u64)sk, .pid = pid_tgid >> 32 };
	char head[16] = {};

	if (agent_traffic(sk)) {
		count(COUNT_SELF);
		return;
	}
	if (size < 8 || !buf || bpf_probe_read_user(head, size < 16 ? 8 : 16, buf))
		return;
	if (!looks_like_http(head)) {
		count(COUNT_NOT_HTTP);
		return;
	}
	if (head[0] == 'H' && head[1] == 'T')
		on_response(pid_tgid, sk, fd, buf, size, direction, source, ktime_ns,
			    bpf_map_lookup_elem(&pending, &key), head);
	else
		on_request(pid_tgid, sk, fd, buf, size, direction, source, ktime_ns,
			   bpf_map_lookup_elem(&pending, &key), &key);
}

/* Inside an SSL call the syscall carries ciphertext: remember its socket, copy nothing. */
static __always_inline int in_ssl_call(__u64 pid_tgid, struct sock *sk, __u32 fd)
{
	struct ssl_call *call;

	if (!ssl_calls_in_flight)  /* no thread anywhere is inside an SSL call: no lookup */
		return 0;
	call = bpf_map_lookup_elem(&ssl_calls, &pid_tgid);
	if (!call)
		return 0;
	call->sock = (__u64)sk;
	call->fd = fd;
	return 1;
}

static __always_inline void on_write(__u32 fd, const void *buf, __u64 size)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	struct sock *sk;

	if (!selected(pid_tgid)) {
		if (is_agent(pid_tgid) && (sk = socket_of(fd)))
			note_agent_socket(sk);
		return;
	}
	if (size < 8 || !buf)
		return;
	sk = socket_of(fd);
	if (!sk || in_ssl_call(pid_tgid, sk, fd))
		return;
	emit(pid_tgid, sk, fd, buf, size, HTTP_EGRESS, HTTP_SOURCE_SYSCALL, now);
}

/* The first iovec in one read. */
static __always_inline int first_iov(const struct iovec *iov, const void **base, __u64 *len)
{
	struct iovec v;

	if (bpf_probe_read_user(&v, sizeof(v), iov))
		return -1;
	*base = v.iov_base;
	*len = v.iov_len;
	return 0;
}

static __always_inline const struct iovec *msg_iov(const struct user_msghdr *msg)
{
	struct iovec *iov = 0;

	bpf_probe_read_user(&iov, sizeof(iov), &msg->msg_iov);
	return iov;
}

/* Syscall numbers: the two programs below dispatch on them. */
#if defined(__TARGET_ARCH_arm64)
enum { NR_close = 57, NR_read = 63, NR_write = 64, NR_readv = 65, NR_writev = 66, NR_sendfile = 71,
       NR_splice = 76, NR_sendto = 206, NR_recvfrom = 207, NR_sendmsg = 211, NR_recvmsg = 212 };
#define SYSCALL_NR(regs) ((regs)->syscallno)
#else
enum { NR_read = 0, NR_write = 1, NR_close = 3, NR_readv = 19, NR_writev = 20, NR_sendfile = 40,
       NR_sendto = 44, NR_recvfrom = 45, NR_sendmsg = 46, NR_recvmsg = 47, NR_splice = 275 };
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#endif

/* A 32-bit process's syscalls are numbered from another table (x86-64's TS_COMPAT): they are
 * left alone rather than misread (its read would be taken for a close). */
static __always_inline int compat_syscall(void)
{
#if defined(__TARGET_ARCH_x86)
	return bpf_get_current_task_btf()->thread_info.status & 0x0002;
#else
	return 0;
#endif
}

/* Reads are taken at syscall exit only, when the bytes are there: the arguments are still in
 * the task's saved registers, so no entry program and no per-thread table are needed.
 * kind: 0 a plain buffer (read, recvfrom), 1 an iovec array (readv), 2 a msghdr (recvmsg). */
static __always_inline void on_read_exit(struct pt_regs *regs, long ret, int kind)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid(), arg;
	const void *buf;
	struct sock *sk;
	__u64 size = ret;
	__u32 fd;

	fd = PT_REGS_PARM1_SYSCALL(regs);
	if (!selected(pid_tgid)) {
		if (is_agent(pid_tgid) && (sk = socket_of(fd)))
			note_agent_socket(sk);
		return;
	}
	arg = PT_REGS_PARM2_SYSCALL(regs);
	sk = socket_of(fd);
	if (!sk || in_ssl_call(pid_tgid, sk, fd))
		return;
	buf = (const void *)arg;
	if (kind) {
		const struct iovec *iov = kind == 2 ? msg_iov((const struct user_msghdr *)arg)
						    : (const struct iovec *)arg;
		__u64 first;

		if (!iov || first_iov(iov, &buf, &first))
			return;
		if (first < size)
			size = first;
	}
	emit(pid_tgid, sk, fd, buf, size, HTTP_INGRESS, HTTP_SOURCE_SYSCALL, bpf_ktime_get_ns());
}

/* writev/sendmsg: the head of a message is in its first iovec (nginx writes headers so). */
static __always_inline void on_writev(__u32 fd, const struct iovec *iov)
{
	const void *base;
	__u64 len;

	if (iov && !first_iov(iov, &base, &len))
		on_write(fd, base, len);
}

static __always_inline void on_close(__u32 fd)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	struct pending_key pkey = { .pid = pid_tgid >> 32 };
	struct pending *p;
	struct http_sock *known;
	__u64 sock;
	struct scratch *s;
	__u32 zero = 0;

	if (is_agent(pid_tgid)) {
		struct sock *sk = socket_of(fd);

		if (sk)
			forget_agent_socket(sk);
		return;
	}
	/* Only fds that carried HTTP are in the map: every other close stops at this lookup. */
	known = bpf_map_lookup_elem(&http_socks, &key);
	if (!known)
		return;
	sock = known->sock;
	bpf_map_delete_elem(&http_socks, &key);
	pkey.sock = sock;
	p = bpf_map_lookup_elem(&pending, &pkey);
	if (p) {
		/* a request still waiting: user space ends it as a broken exchange */
		if (p->state == PENDING_REQUEST)
			emit_pending(pid_tgid, (struct sock *)sock, fd, p, p->direction, p->start_ns, 0);
		bpf_map_delete_elem(&pending, &pkey);
	}
	s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return;
	s->event.ktime_ns = s->event.start_ns = bpf_ktime_get_ns();
	s->event.status = 0;
	s->event.sock = sock;
	s->event.pid = pid_tgid >> 32;
	s->event.tid = (__u32)pid_tgid;
	s->event.fd = fd;
	s->event.size = 0;
	s->event.captured = 0;
	s->event.direction = HTTP_CLOSE;
	s->event.source = HTTP_SOURCE_SYSCALL;
	s->event.family = 0;   /* user space needs only (pid, sock) of a close */
	bpf_get_current_comm(s->event.comm, sizeof(s->event.comm));
	if (bpf_ringbuf_output(&http_events, s, record_size(), 0))
		count(COUNT_RING_FULL);
}

/* sendfile/splice into a socket (nginx with `sendfile on` sends bodies so): counted only. */
static __always_inline void on_zero_copy(__u32 fd, __u32 what)
{
	if (selected(bpf_get_current_pid_tgid()) && socket_of(fd))
		count(what);
}

/* One BTF raw tracepoint for every syscall entry and one for every exit, as Falco's modern
 * probe does, instead of a classic tracepoint per syscall: measured on nginx + wrk here, nine
 * classic syscall tracepoints with empty programs cost about 15% of requests/s, these two
 * about 7%. Any other syscall returns at the switch. */
SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	if (compat_syscall())
		return 0;
	switch (id) {
	case NR_write:
	case NR_sendto:
		on_write(PT_REGS_PARM1_SYSCALL(regs), (const void *)PT_REGS_PARM2_SYSCALL(regs),
			 PT_REGS_PARM3_SYSCALL(regs));
		break;
	case NR_writev:
		if (PT_REGS_PARM3_SYSCALL(regs) > 0)
			on_writev(PT_REGS_PARM1_SYSCALL(regs), (const struct iovec *)PT_REGS_PARM2_SYSCALL(regs));
		break;
	case NR_sendmsg:
		on_writev(PT_REGS_PARM1_SYSCALL(regs),
			  msg_iov((const struct user_msghdr *)PT_REGS_PARM2_SYSCALL(regs)));
		break;
	case NR_close:
		on_close(PT_REGS_PARM1_SYSCALL(regs));
		break;
	case NR_sendfile:
		on_zero_copy(PT_REGS_PARM1_SYSCALL(regs), COUNT_SENDFILE);
		break;
	case NR_splice:
		on_zero_copy(PT_REGS_PARM3_SYSCALL(regs), COUNT_SPLICE);
		break;
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	/* A read of fewer than 8 bytes (EAGAIN, EOF, small pipe reads) is never HTTP: the
	 * cheapest test goes first, before the syscall number is even read. */
	if (ret < 8 || compat_syscall())
		return 0;
	switch (SYSCALL_NR(regs)) {
	case NR_read:
	case NR_recvfrom:
		on_read_exit(regs, ret, 0);
		break;
	case NR_readv:
		on_read_exit(regs, ret, 1);
		break;
	case NR_recvmsg:
		on_read_exit(regs, ret, 2);
		break;
	}
	return 0;
}

/* --- libssl ---------------------------------------------------------------------------- */
/* libbpf 1.1 has no BPF_UPROBE: the kprobe macros read the same pt_regs. */

static __always_inline void ssl_enter(__u64 ssl, __u64 buf, __u64 num, __u64 out_len)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct ssl_call call = {};

	if (!selected(pid_tgid))
		return;
	call.ssl = ssl;
	call.buf = buf;
	call.num = num;
	call.out_len = out_len;
	call.ktime_ns = bpf_ktime_get_ns();
	if (!bpf_map_update_elem(&ssl_calls, &pid_tgid, &call, BPF_NOEXIST))
		__sync_fetch_and_add(&ssl_calls_in_flight, 1);
	else  /* the thread's last call never returned (a longjmp, a kill): replace it */
		bpf_map_update_elem(&ssl_calls, &pid_tgid, &call, BPF_ANY);
}

/* ret: bytes (SSL_read/SSL_write) or 1 for success (_ex, the count is at out_len). */
static __always_inline void ssl_exit(long ret, __u8 direction)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct ssl_call *call = bpf_map_lookup_elem(&ssl_calls, &pid_tgid);
	__u64 size = ret;
	struct ssl_sock *known, found;

	if (!call)
		return;
	if (call->out_len) {
		size = 0;
		if (ret == 1)
			bpf_probe_read_user(&size, sizeof(size), (const void *)call->out_len);
	}
	if (call->sock) {
		found.sock = call->sock;
		found.fd = call->fd;
		bpf_map_update_elem(&ssl_socks, &call->ssl, &found, BPF_ANY);
	} else if ((known = bpf_map_lookup_elem(&ssl_socks, &call->ssl))) {
		call->sock = known->sock;
		call->fd = known->fd;
	}
	if (ret > 0 && size > 0 && call->sock)
		emit(pid_tgid, (struct sock *)call->sock, call->fd, (const void *)call->buf, size, direction,
		     HTTP_SOURCE_SSL, direction == HTTP_EGRESS ? call->ktime_ns : bpf_ktime_get_ns());
	if (!bpf_map_delete_elem(&ssl_calls, &pid_tgid))
		__sync_fetch_and_add(&ssl_calls_in_flight, -1);
}

SEC("uprobe")
int BPF_KPROBE(ssl_rw_enter, void *ssl, void *buf, int num)
{
	ssl_enter((__u64)ssl, (__u64)buf, num, 0);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_rw_ex_enter, void *ssl, void *buf, __u64 num, __u64 *out_len)
{
	ssl_enter((__u64)ssl, (__u64)buf, num, (__u64)out_len);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_read_exit, int ret)
{
	ssl_exit(ret, HTTP_INGRESS);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_write_exit, int ret)
{
	ssl_exit(ret, HTTP_EGRESS);
	return 0;
}

/* Keep the structs user space mirrors in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_event);
} http_event_layout SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} pending_layout SEC(".maps");
