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

/* The ring buffer benchmark's synthetic record: 40 bytes, as in the bar. */
struct bench_event {
	__u64 seq;
	__u64 ktime_ns;
	__u32 cpu;
	__u32 batch;
	__u64 a;
	__u64 b;
};

#endif /* OTELBPF_EVENTS_H */
