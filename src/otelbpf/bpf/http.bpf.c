// SPDX-License-Identifier: GPL-2.0
/* HTTP/1.x capture from syscall tracepoints (Coroot's approach: no kprobes needed), and the
 * plaintext of TLS connections from uprobes on libssl.
 *
 * - sys_enter_{write,writev,sendto,sendmsg}: the buffer is there at entry.
 * - sys_exit_{read,readv,recvfrom,recvmsg}: the buffer and fd from the saved registers, the
 *   bytes the kernel filled in.
 * - sys_enter_close: the end of a connection that carried HTTP (known by (tgid, fd): any other
 *   close costs one hash lookup).
 * Work per syscall is kept tiny and in this order: skip our own process and unselected ones,
 * then "is this fd a TCP socket" (task->files->fdt->fd[fd], S_ISSOCK, the socket's family),
 * then "does the message start like HTTP/1.x" from its first 8 bytes. Only then is anything
 * copied: the first `capture_bytes` bytes, to one ring buffer. Other socket traffic is
 * counted, never copied.
 * - uprobes on SSL_read/SSL_write (and _ex): the same events with the plaintext; the socket
 *   is the one the thread's syscall inside the SSL call used, remembered per SSL object.
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
const volatile __u32 self_pid = 0;        /* the agent: its own OTLP/HTTP exports are not traced */
const volatile __u32 filter_pids = 0;     /* 1: only processes in selected_pids */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} selected_pids SEC(".maps");

/* Sockets that carried HTTP, by (tgid << 32 | fd) -> struct sock address: a close is reported
 * only for these, and a close of any other fd (files, pipes) costs one hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, __u64);
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
 * the bytes never pass through user memory). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} http_counts SEC(".maps");

enum { COUNT_RING_FULL = 0, COUNT_NOT_HTTP = 1, COUNT_READS_FULL = 2, COUNT_SENDFILE = 3, COUNT_SPLICE = 4 };

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&http_counts, &what);

	if (n)
		*n += 1;
}

static __always_inline int selected(__u64 pid_tgid)
{
	__u32 pid = pid_tgid >> 32;

	if (pid == self_pid)
		return 0;
	return !filter_pids || bpf_map_lookup_elem(&selected_pids, &pid);
}

/* The struct sock behind fd when it is an IPv4/IPv6 socket, else 0. */
static __always_inline struct sock *socket_of(__u32 fd)
{
	/* A BTF task pointer: task->files->fdt->fd are plain loads, not helper calls. */
	struct task_struct *task = bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = 0;
	struct socket *socket;
	struct sock *sk;
	__u16 family;

	if (!files)
		return 0;
	fdt = files->fdt;
	if (!fdt || fd >= fdt->max_fds)
		return 0;
	fds = fdt->fd;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file || (BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	socket = BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(socket, sk);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
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


/* Copies the message at buf (size bytes) when it starts like HTTP; counts it when it does not. */
static __always_inline void emit(__u64 pid_tgid, struct sock *sk, __u32 fd, const void *buf, __u64 size,
				 __u8 direction, __u8 source, __u64 ktime_ns)
{
	struct http_event *e;
	char head[8];
	__u64 len = size, sock = (__u64)sk, key, *known;
	int fresh;

	if (size < 8 || !buf || bpf_probe_read_user(head, sizeof(head), buf))
		return;
	if (!looks_like_http(head)) {
		count(COUNT_NOT_HTTP);
		return;
	}
	if (len > capture_bytes)
		len = capture_bytes;
	if (len > OTELBPF_HTTP_MAX_CAPTURE)
		len = OTELBPF_HTTP_MAX_CAPTURE;
	barrier_var(len);
	/* Straight into the ring (no per-CPU scratch and second copy): the size is a load-time
	 * constant, so the verifier knows it. Submitting with flags 0 wakes the reader only when
	 * it had caught up (this record is the first unread one): once per drain of a reader that
	 * batches, which the sensor does (sensors/http.py MIN_DRAIN_GAP). */
	e = bpf_ringbuf_reserve(&http_events, record_size(), 0);
	if (!e) {
		count(COUNT_RING_FULL);
		return;
	}
	if (len < 1 || len > capture_bytes || bpf_probe_read_user((void *)(e + 1), len, buf)) {
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return;
	}
	e->ktime_ns = ktime_ns;
	e->sock = sock;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->fd = fd;
	e->size = size > 0xffffffff ? 0xffffffff : size;
	e->captured = len;
	e->direction = direction;
	e->source = source;
	e->_pad = 0;
	/* The endpoints and the command name go with the first message of a connection (this fd,
	 * this socket) only: later ones carry family 0 and user space takes them from that one. */
	key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	known = bpf_map_lookup_elem(&http_socks, &key);
	fresh = !known || *known != sock;
	if (fresh) {
		read_endpoints(sk, e);
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		bpf_ringbuf_submit(e, 0);
		/* only once the record carrying the endpoints is in the ring */
		bpf_map_update_elem(&http_socks, &key, &sock, BPF_ANY);
	} else {
		e->family = 0;
		e->comm[0] = 0;
		bpf_ringbuf_submit(e, 0);
	}
}

/* Inside an SSL call the syscall carries ciphertext: remember its socket, copy nothing. */
static __always_inline int in_ssl_call(__u64 pid_tgid, struct sock *sk, __u32 fd)
{
	struct ssl_call *call = bpf_map_lookup_elem(&ssl_calls, &pid_tgid);

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

	if (size < 8 || !buf || !selected(pid_tgid))
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

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct trace_event_raw_sys_enter *ctx)
{
	on_write(ctx->args[0], (const void *)ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	on_write(ctx->args[0], (const void *)ctx->args[1], ctx->args[2]);
	return 0;
}

/* writev/sendmsg: the head of a message is in its first iovec (nginx writes headers so). */
SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	const void *base;
	__u64 len;

	if (ctx->args[2] < 1 || first_iov((const struct iovec *)ctx->args[1], &base, &len))
		return 0;
	on_write(ctx->args[0], base, len);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	const struct iovec *iov = msg_iov((const struct user_msghdr *)ctx->args[1]);
	const void *base;
	__u64 len;

	if (!iov || first_iov(iov, &base, &len))
		return 0;
	on_write(ctx->args[0], base, len);
	return 0;
}

/* Reads are taken at syscall exit only, when the bytes are there: the arguments are still in
 * the task's saved registers (x86-64 keeps di/si/dx of the entry until return), so no
 * sys_enter program and no per-thread table are needed. Cheapest checks first: a read of
 * fewer than 8 bytes (EAGAIN, EOF, small pipe reads) returns before anything else.
 * kind: 0 a plain buffer (read, recvfrom), 1 an iovec array (readv), 2 a msghdr (recvmsg). */
static __always_inline void on_read_exit(long ret, int kind)
{
	__u64 pid_tgid, arg;
	struct pt_regs *regs;
	const void *buf;
	struct sock *sk;
	__u64 size = ret;
	__u32 fd;

	if (ret < 8)
		return;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!selected(pid_tgid))
		return;
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	fd = BPF_CORE_READ(regs, di);
	arg = BPF_CORE_READ(regs, si);
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

SEC("tracepoint/syscalls/sys_exit_read")
int exit_read(struct trace_event_raw_sys_exit *ctx)
{
	on_read_exit(ctx->ret, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_recvfrom(struct trace_event_raw_sys_exit *ctx)
{
	on_read_exit(ctx->ret, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_readv")
int exit_readv(struct trace_event_raw_sys_exit *ctx)
{
	on_read_exit(ctx->ret, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_recvmsg")
int exit_recvmsg(struct trace_event_raw_sys_exit *ctx)
{
	on_read_exit(ctx->ret, 2);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct trace_event_raw_sys_enter *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 zero = 0, fd = ctx->args[0];
	__u64 key = (pid_tgid & 0xffffffff00000000ULL) | fd;
	__u64 sock, *known;
	struct scratch *s;

	/* Only fds that carried HTTP are in the map: every other close stops at this lookup. */
	known = bpf_map_lookup_elem(&http_socks, &key);
	if (!known)
		return 0;
	sock = *known;
	bpf_map_delete_elem(&http_socks, &key);
	s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	s->event.ktime_ns = bpf_ktime_get_ns();
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
	return 0;
}

/* sendfile/splice into a socket (nginx with `sendfile on` sends bodies so): counted only. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int enter_sendfile(struct trace_event_raw_sys_enter *ctx)
{
	if (selected(bpf_get_current_pid_tgid()) && socket_of(ctx->args[0]))
		count(COUNT_SENDFILE);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_splice")
int enter_splice(struct trace_event_raw_sys_enter *ctx)
{
	if (selected(bpf_get_current_pid_tgid()) && socket_of(ctx->args[2]))
		count(COUNT_SPLICE);
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
	bpf_map_delete_elem(&ssl_calls, &pid_tgid);
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

/* Keep the user-space-facing struct in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_event);
} http_event_layout SEC(".maps");
