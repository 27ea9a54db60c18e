// SPDX-License-Identifier: GPL-2.0
/* Continuous CPU profiling: a cpu-clock perf event on every CPU runs this program at the
 * configured frequency; it counts samples per (process, thread name, user stack, kernel
 * stack) in the kernel, so user space only reads aggregates.
 *
 * Two generations of maps (counts and stacks): user space flips `active`, lets samples in
 * flight finish, then drains and clears the idle generation. A stack id therefore never
 * disappears between the sample that made it and the drain that reads it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define PERF_MAX_STACK_DEPTH 127
#define EEXIST 17
#define EFAULT 14

/* Set by user space before load: profile only this process (0: every process). */
const volatile __u32 target_pid = 0;

enum profile_error {
	PROFILE_STACK_COLLISION = 0, /* -EEXIST: the stack's hash slot holds another stack */
	PROFILE_STACK_FULL = 1,      /* any other failure: the stack map is full (-ENOMEM) */
	PROFILE_COUNTS_FULL = 2,     /* the counts map had no room for a new key */
	PROFILE_ERROR_KINDS = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} profile_active SEC(".maps");

#define COUNTS_MAP(name)                                         \
	struct {                                                 \
		__uint(type, BPF_MAP_TYPE_HASH);                 \
		__uint(max_entries, 16384);                      \
		__type(key, struct profile_key);                 \
		__type(value, __u64);                            \
	} name SEC(".maps")

#define STACKS_MAP(name)                                         \
	struct {                                                 \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);          \
		__uint(max_entries, 16384);                      \
		__uint(key_size, sizeof(__u32));                 \
		__uint(value_size, PERF_MAX_STACK_DEPTH * sizeof(__u64)); \
	} name SEC(".maps")

COUNTS_MAP(profile_counts_0);
COUNTS_MAP(profile_counts_1);
STACKS_MAP(profile_stacks_0);
STACKS_MAP(profile_stacks_1);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROFILE_ERROR_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} profile_errors SEC(".maps");

/* Processes already announced to user space; cleared at exec (a new image, new mappings)
 * and at exit. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} profile_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} profile_pids SEC(".maps");

static __always_inline void count_error(__u32 kind)
{
	__u64 *n = bpf_map_lookup_elem(&profile_errors, &kind);

	if (n)
		*n += 1;
}

static __always_inline __s32 stack_id(void *ctx, void *stacks, __u64 flags)
{
	long id = bpf_get_stackid(ctx, stacks, flags);

	if (id == -EFAULT) /* no stack of this kind: a kernel thread has no user stack */
		return -1;
	if (id < 0)
		count_error(id == -EEXIST ? PROFILE_STACK_COLLISION : PROFILE_STACK_FULL);
	return id;
}

static __always_inline void announce(__u32 pid)
{
	__u8 one = 1;
	struct profile_pid_event e = { .pid = pid };

	if (bpf_map_lookup_elem(&profile_seen, &pid))
		return;
	bpf_map_update_elem(&profile_seen, &pid, &one, BPF_ANY);
	bpf_ringbuf_output(&profile_pids, &e, sizeof(e), 0); /* lost only if user space stalls */
}

SEC("perf_event")
int profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	__u32 zero = 0, *active;
	struct profile_key key = {};
	void *counts;
	__u64 one = 1, *count;
	long err;

	if (pid == 0) /* the idle task: not work */
		return 0;
	if (target_pid && pid != target_pid)
		return 0;
	active = bpf_map_lookup_elem(&profile_active, &zero);
	if (active && *active) {
		counts = &profile_counts_1;
		key.user_stack_id = stack_id(ctx, &profile_stacks_1, BPF_F_USER_STACK);
		key.kernel_stack_id = stack_id(ctx, &profile_stacks_1, 0);
	} else {
		counts = &profile_counts_0;
		key.user_stack_id = stack_id(ctx, &profile_stacks_0, BPF_F_USER_STACK);
		key.kernel_stack_id = stack_id(ctx, &profile_stacks_0, 0);
	}
	key.pid = pid;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));

	count = bpf_map_lookup_elem(counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
	} else {
		err = bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST);
		if (err == -EEXIST) { /* another CPU added the key meanwhile */
			count = bpf_map_lookup_elem(counts, &key);
			if (count)
				__sync_fetch_and_add(count, 1);
		} else if (err) {
			count_error(PROFILE_COUNTS_FULL);
		}
	}
	announce(pid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(profile_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 pid = BPF_CORE_READ(task, tgid);

	bpf_map_delete_elem(&profile_seen, &pid);
	return 0;
}

/* A pid used again by a later process must be announced again. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(profile_exit, struct task_struct *task)
{
	__u32 pid = BPF_CORE_READ(task, tgid);

	if (BPF_CORE_READ(task, pid) == pid)
		bpf_map_delete_elem(&profile_seen, &pid);
	return 0;
}

/* Keeps struct profile_pid_event in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct profile_pid_event);
} profile_pid_scratch SEC(".maps");
