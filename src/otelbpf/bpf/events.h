/* Event layouts shared by the BPF programs and their Python decoders.
 *
 * Every struct here has a mirror in Python (a numpy dtype) that is checked against the
 * object's BTF at load, so a change on one side only is an error, never garbage data.
 * Keep fields naturally aligned and sizes multiples of 8.
 */
#ifndef OTELBPF_EVENTS_H
#define OTELBPF_EVENTS_H

#define OTELBPF_COMM_LEN 16
#define OTELBPF_FILENAME_LEN 512
#define OTELBPF_MAX_ARGS_BYTES 32768 /* hard ceiling; the run-time bound is a .rodata knob */

enum process_event_type {
	PROCESS_EVENT_EXEC = 1,
	PROCESS_EVENT_FORK = 2,
	PROCESS_EVENT_EXIT = 3,
};

/* Common head of every process event; fork and exit records are exactly this. */
struct process_event {
	__u64 ktime_ns;        /* CLOCK_MONOTONIC time of the event */
	__u64 start_time_ns;   /* CLOCK_MONOTONIC start of the process (thread group leader) */
	__u64 cgroup_id;       /* cgroup v2 id (inode of the cgroup directory) */
	__u32 type;            /* enum process_event_type */
	__u32 pid;             /* thread group id */
	__u32 tid;             /* thread that caused the event */
	__u32 ppid;            /* real parent's thread group id */
	__u32 uid;
	__u32 gid;
	__u32 exit_code;       /* exit: wait status ((code << 8) | signal) */
	__u32 old_pid;         /* exec: pid of the thread that called execve */
	char comm[OTELBPF_COMM_LEN];
};

/* An exec record: this struct, then filename_len bytes of the path given to execve, then
 * args_len bytes of argv (NUL-separated, as in /proc/PID/cmdline). Records are only as long
 * as their strings: a typical exec takes ~150 bytes of ring, not the 33 KiB worst case. */
struct exec_event {
	struct process_event head;
	__u32 filename_len;    /* bytes of filename that follow, without a NUL */
	__u32 args_len;        /* bytes of argv that follow the filename */
	__u32 args_size;       /* full size of argv in the process, to tell truncation */
	__u32 _pad;
};

/* CPU profiling: samples counted in the kernel per (process, thread name, user stack,
 * kernel stack). A stack id below 0 means no stack of that kind (kernel thread, or a
 * sample taken in user mode has no kernel stack). */
struct profile_key {
	__u32 pid;             /* thread group id */
	__s32 user_stack_id;   /* id in the stack map, or < 0 */
	__s32 kernel_stack_id; /* id in the stack map, or < 0 */
	__u32 _pad;
	char comm[OTELBPF_COMM_LEN];
};

/* A process the profiler sampled for the first time since it started or exec'd: user space
 * reads its memory mappings while it is alive, so its frames resolve after it exits. */
struct profile_pid_event {
	__u32 pid;
	__u32 _pad;
};

/* --- network --------------------------------------------------------------------------- */

enum conn_event_type {
	CONN_LISTEN = 1,      /* a process started listening */
	CONN_UNLISTEN = 2,    /* ... and stopped */
	/* No event when a connection is established: the kernel keeps it in its connection table,
	 * user space learns of it at close or from the periodic socket walk. One event per
	 * connection end keeps the ring's load (and user space's) at a third. */
	CONN_CLOSE = 5,       /* an established connection ended: final counters */
	CONN_FAILED = 6,      /* a connection attempt ended before it was established */
};

enum conn_role {
	ROLE_CLIENT = 1,
	ROLE_SERVER = 2,
};

#define TCP_FIN_RECEIVED 1  /* bytes_received counts the peer's FIN */
#define TCP_FIN_ACKED 2     /* bytes_acked counts our FIN */

/* TCP counters of one connection, read from the kernel's own struct tcp_sock. The kernel
 * counts sequence space, so SYN and FIN are in bytes_acked/bytes_received; `flags` says
 * which FINs are, user space subtracts them (and our SYN, for connections we opened). */
struct tcp_counters {
	__u64 bytes_acked;     /* sequence space sent and acknowledged by the peer */
	__u64 bytes_received;  /* sequence space received in order */
	__u64 bytes_retrans;
	__u32 segs_out;
	__u32 segs_in;
	__u32 total_retrans;
	__u32 srtt_us;         /* smoothed RTT in microseconds */
	__u32 flags;           /* TCP_FIN_* */
	__u32 _pad;
};

/* The endpoints of a flow; addresses are IPv4 in the first 4 bytes or IPv6. */
struct flow_endpoints {
	__u8 local_addr[16];
	__u8 peer_addr[16];
	__u16 family;          /* AF_INET or AF_INET6 */
	__u16 local_port;      /* host byte order */
	__u16 peer_port;       /* host byte order */
	__u8 proto;            /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 _pad;
};

struct conn_event {
	__u64 ktime_ns;
	__u64 start_ns;        /* when the connection attempt started (or was accepted) */
	__u64 sock;            /* kernel socket address: identifies the connection while it lives */
	__u64 cgroup_id;
	struct tcp_counters counters;
	struct flow_endpoints flow;
	__u32 type;            /* enum conn_event_type */
	__u32 pid;             /* owning process (thread group), 0 if unknown */
	__u32 sk_err;          /* errno the kernel recorded on the socket (refused, timed out, reset) */
	__u8 old_state;
	__u8 role;             /* enum conn_role */
	__u16 _pad;
	char comm[OTELBPF_COMM_LEN];
};

/* One record of the periodic TCP socket walk (iter/tcp) of the agent's network namespace:
 * every socket the kernel tracks for us, and the established or listening ones it does not.
 * Those predate the agent and are adopted through their inode, which names their process. */
struct conn_sample {
	__u64 sock;
	__u64 inode;           /* socket inode, 0 if the socket has no file */
	struct tcp_counters counters;
	struct flow_endpoints flow;
	__u8 state;            /* TCP state */
	__u8 tracked;          /* 1 if the socket is in the kernel's connection table */
	__u16 _pad;
	__u32 _pad2;
};

/* Per-flow aggregates kept in the kernel and drained in batches by user space. */
struct flow_key {
	struct flow_endpoints flow;
	__u32 pid;
	__u32 _pad;
};

struct flow_value {
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 rx_packets;
	__u64 retransmits;
};

#define OTELBPF_DNS_PAYLOAD 512

/* A DNS message (UDP port 53) seen on a socket; the payload is parsed in user space. */
struct dns_event {
	__u64 ktime_ns;
	__u64 cookie;          /* socket cookie: pairs a reply with its query's process */
	struct flow_endpoints flow;
	__u32 pid;
	__u16 payload_len;     /* bytes of payload that follow this struct */
	__u8 egress;           /* 1: sent by this host, 0: received */
	__u8 _pad;
};

/* --- HTTP (l7) ------------------------------------------------------------------------- */

#define OTELBPF_HTTP_MAX_CAPTURE 8192 /* hard ceiling; the run-time bound is a .rodata knob */

enum http_direction {
	HTTP_EGRESS = 0,       /* the process wrote these bytes */
	HTTP_INGRESS = 1,      /* the process read these bytes */
	HTTP_CLOSE = 2,        /* the process closed a socket that carried HTTP */
	/* A request and its response, paired in the kernel: the request's bytes follow,
	 * start_ns is when it was read (server) or written (client), ktime_ns when the
	 * response was written (server) or read (client), status is the response's code. */
	HTTP_SERVER_EXCHANGE = 3,
	HTTP_CLIENT_EXCHANGE = 4,
};

enum http_source {
	HTTP_SOURCE_SYSCALL = 0,
	HTTP_SOURCE_SSL = 1,   /* plaintext from libssl SSL_read/SSL_write */
};

/* A socket message that starts like HTTP/1.x (a method or "HTTP/1."), or a close: this
 * struct, then `captured` bytes of the message. Reads are stamped when they return,
 * writes when they are issued. */
struct http_event {
	__u64 ktime_ns;
	__u64 start_ns;        /* exchanges: when the request was seen; else ktime_ns */
	__u64 sock;            /* kernel struct sock address: the connection while it lives */
	__u32 pid;             /* thread group id */
	__u32 tid;
	__u32 fd;
	__u32 size;            /* bytes the syscall moved (or was asked to write) */
	__u16 captured;        /* bytes of the message that follow */
	__u8 direction;        /* enum http_direction */
	__u8 source;           /* enum http_source */
	__u16 family;          /* AF_INET or AF_INET6 */
	__u16 local_port;      /* host byte order */
	__u16 peer_port;
	__u16 status;          /* exchanges: the response's status code */
	__u8 local_addr[16];   /* IPv4 in the first 4 bytes, or IPv6 */
	__u8 peer_addr[16];
	char comm[OTELBPF_COMM_LEN];
	__u32 _pad2;
};

/* --- security ---------------------------------------------------------------------------- */

#define SEC_PATH_LEN 256       /* path and string arguments matched in the kernel (longer: cut) */
#define SEC_ANCESTORS 4        /* ancestors copied into each event, nearest first */

/* One ancestor of the process that matched, read from the task tree at the match. */
struct sec_ancestor {
	__u64 start_time_ns;   /* CLOCK_MONOTONIC start of the process */
	__u32 pid;
	__u32 _pad;
	char comm[OTELBPF_COMM_LEN];
};

/* bpf hook: the program a bpf() load or attach (or a perf event's SET_BPF ioctl) is about. */
struct sec_bpf {
	__u8 tag[8];           /* the program's tag (first bytes of the SHA of its instructions), 0s if unknown */
	__u32 prog_id;         /* the kernel's program id, 0 if the load failed */
	__u32 prog_type;       /* enum bpf_prog_type */
	__u32 attach_type;     /* enum bpf_attach_type (SET_BPF: the perf event's attr.type) */
	__s32 ret;             /* what the syscall returned (a new fd, 0 or -errno) */
	char name[16];         /* the program's name */
};

/* A security rule matched: only matches reach user space. */
struct security_event {
	__u64 ktime_ns;
	__u64 start_time_ns;   /* of the matching process (thread group leader) */
	__u64 cgroup_id;
	__u64 args[3];         /* numeric syscall arguments (open flags and mode, ids, ptrace request and pid, port;
				* bpf: command, target fd or perf event config) */
	__u32 rule;            /* rule slot in the kernel's rule table */
	__u32 hook;            /* enum in security.bpf.c / otelbpf.security.hooks */
	__u32 syscall;         /* which syscall of the hook */
	__u32 action;          /* the action taken */
	__u32 signal;          /* signal sent, 0 for none */
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 pidns;           /* pid namespace inode number */
	__u32 str_len;         /* bytes in str, without the NUL */
	__u8 addr[16];         /* connect: destination, IPv4 as ::ffff:a.b.c.d */
	struct sec_bpf bpf;    /* bpf: the program, zeros for other hooks */
	char comm[OTELBPF_COMM_LEN];
	char binary[SEC_PATH_LEN];  /* path given to the exec of the running image, "" if unknown */
	char str[SEC_PATH_LEN];     /* file_open, exec: the opened file's path as the kernel resolved it;
				     * bpf: the attach target's name where the kernel has one;
				     * other hooks: the string argument as the process passed it */
	struct sec_ancestor ancestors[SEC_ANCESTORS];
};

#endif /* OTELBPF_EVENTS_H */
