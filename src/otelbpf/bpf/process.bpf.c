// SPDX-License-Identifier: GPL-2.0
/* Process lifecycle: exec, fork and exit of every process on the host.
 *
 * BTF-typed tracepoints (tp_btf) on sched_process_{exec,fork,exit}: stable hooks that work
 * without kprobes and hand us the task_struct directly. Threads are filtered in the kernel:
 * user space only hears about processes (thread groups).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define PF_KTHREAD 0x00200000 /* include/linux/sched.h; kernel threads are not processes we report */

/* Set by user space before load. */
const volatile __u32 max_args_bytes = 4096;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); /* user space sets the configured size */
} process_events SEC(".maps");

/* Records the ring buffer had no room for, per CPU: exported, never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} process_drops SEC(".maps");

/* Scratch space for building a variable-length exec record: too big for the stack and for
 * a per-CPU value (32 KiB limit), so a plain array with one slot per CPU, sized by user space. */
struct exec_scratch {
	struct exec_event event;
	char data[OTELBPF_FILENAME_LEN + OTELBPF_MAX_ARGS_BYTES]; /* filename, then argv */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch_map SEC(".maps");

/* Keeps struct process_event in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct process_event);
} process_scratch_map SEC(".maps");

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *drops = bpf_map_lookup_elem(&process_drops, &zero);

	if (drops)
		*drops += 1;
}

static __always_inline void fill_head(struct process_event *e, struct task_struct *task, __u32 type)
{
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	__u64 uid_gid = bpf_get_current_uid_gid();

	e->ktime_ns = bpf_ktime_get_ns();
	e->start_time_ns = BPF_CORE_READ(leader, start_time);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->type = type;
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->exit_code = 0;
	e->old_pid = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct exec_scratch *s = bpf_map_lookup_elem(&exec_scratch_map, &cpu);
	struct exec_event *e;
	unsigned long arg_start, arg_end, size;
	__u32 fn_len;
	__u32 bound = max_args_bytes;
	long n;

	if (!s)
		return 0;
	e = &s->event;
	fill_head(&e->head, task, PROCESS_EVENT_EXEC);
	e->head.old_pid = old_pid;

	n = bpf_probe_read_kernel_str(s->data, OTELBPF_FILENAME_LEN, BPF_CORE_READ(bprm, filename));
	fn_len = n > 0 ? n - 1 : 0; /* drop the NUL: argv follows right after */
	e->filename_len = fn_len;

	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	size = arg_end > arg_start ? arg_end - arg_start : 0;
	e->args_size = size;
	if (bound > OTELBPF_MAX_ARGS_BYTES)
		bound = OTELBPF_MAX_ARGS_BYTES;
	if (size > bound)
		size = bound;
	/* The masks only convince the verifier; both values are already within their bounds. */
	size &= OTELBPF_MAX_ARGS_BYTES - 1;
	fn_len &= OTELBPF_FILENAME_LEN - 1;
	if (size && bpf_probe_read_user(s->data + fn_len, size, (void *)arg_start) != 0)
		size = 0;
	e->args_len = size;

	if (bpf_ringbuf_output(&process_events, s, sizeof(struct exec_event) + fn_len + size, 0))
		count_drop();
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	struct process_event e;

	/* A new thread is not a new process. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid) || BPF_CORE_READ(child, flags) & PF_KTHREAD)
		return 0;
	fill_head(&e, child, PROCESS_EVENT_FORK);
	e.tid = BPF_CORE_READ(parent, pid);
	e.ppid = BPF_CORE_READ(parent, tgid);
	if (bpf_ringbuf_output(&process_events, &e, sizeof(e), 0))
		count_drop();
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task)
{
	struct process_event e;

	/* Only the last thread of a group ends the process. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0 || BPF_CORE_READ(task, flags) & PF_KTHREAD)
		return 0;
	fill_head(&e, task, PROCESS_EVENT_EXIT);
	e.exit_code = BPF_CORE_READ(task, exit_code);
	if (bpf_ringbuf_output(&process_events, &e, sizeof(e), 0))
		count_drop();
	return 0;
}
