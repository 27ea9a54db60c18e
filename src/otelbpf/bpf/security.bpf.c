// SPDX-License-Identifier: GPL-2.0
/* Security policies matched in the kernel: file opens, execs, connects, privilege changes,
 * module loads, ptrace and mount, on syscall-entry tracepoints (kprobes, fentry and LSM do
 * not load on the kernels here).
 *
 * User space compiles policies into map contents: a rule table, per-hook rule masks, LPM
 * tries of path prefixes (exact paths end with their NUL, so they are prefixes too) and of
 * reversed paths (postfix matching), an LPM trie of CIDRs, and one of binary paths that is
 * looked up once per exec so that binary selectors cost one map read at match time. Each
 * trie value is the mask of rules whose value is a prefix of the key: the longest match is
 * the union of every rule that matches. Only matches reach the ring buffer.
 *
 * A kill is bpf_send_signal(SIGKILL) at syscall entry: the syscall itself still runs, the
 * process dies on its way back to user space, before its next instruction.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_RULES 64
#define MAX_VALUES 8
#define MAX_CGROUP_LEVELS 16

enum hook { HOOK_FILE = 1, HOOK_EXEC, HOOK_CONNECT, HOOK_PRIVILEGE, HOOK_MODULE, HOOK_PTRACE, HOOK_MOUNT, HOOK_MAX };
enum action { ACTION_POST = 1, ACTION_SIGKILL, ACTION_SIGNAL };
enum syscall {
	SYS_OPENAT = 1, SYS_OPENAT2, SYS_OPEN, SYS_CREAT, SYS_EXECVE, SYS_EXECVEAT, SYS_CONNECT,
	SYS_SETUID, SYS_SETGID, SYS_SETREUID, SYS_SETREGID, SYS_SETRESUID, SYS_SETRESGID, SYS_CAPSET,
	SYS_INIT_MODULE, SYS_FINIT_MODULE, SYS_PTRACE, SYS_MOUNT,
};

/* rule flags */
#define R_BIN_IN (1 << 0)
#define R_BIN_NOTIN (1 << 1)
#define R_PARENT_IN (1 << 2)
#define R_PARENT_NOTIN (1 << 3)
#define R_UID_IN (1 << 4)
#define R_UID_NOTIN (1 << 5)
#define R_CONTAINER (1 << 6) /* only outside the host's pid namespace */
#define R_HOST (1 << 7)      /* only in the host's pid namespace */
#define R_CGROUP (1 << 8)    /* only in (or below) one of the cgroups */
#define R_VALUES (1 << 9)    /* numeric argument in values[] */

#define INTENT_READ 1
#define INTENT_WRITE 2

/* The host's pid namespace: processes in another one count as "in a container". */
const volatile __u32 host_pidns = 0;

struct rule {
	__u32 hook;            /* 0: empty slot */
	__u32 action;
	__u32 signal;
	__u32 flags;
	__u32 intent;          /* file: INTENT_* bits the open must have, 0 for any */
	__u32 n_uids;
	__u32 uids[MAX_VALUES];
	__u32 n_values;
	__u32 _pad;
	__u64 values[MAX_VALUES]; /* ports, target ids, ptrace requests */
	__u32 n_cgroups;
	__u32 rate_limit;      /* events per window, 0: unlimited */
	__u64 cgroups[MAX_VALUES];
	__u64 rate_window_ns;
};

/* Per hook: which rules apply, and which filter on the path/address trie (in or not in). */
struct hook_conf {
	__u64 rules;
	__u64 in_rules;        /* match only if the trie says so */
	__u64 notin_rules;     /* match only if the trie does not say so */
	__u32 postfix;         /* some rule matches path ends: reverse the path too */
	__u32 _pad;
};

struct path_key {
	__u32 prefixlen;
	__u8 data[SEC_PATH_LEN]; /* hook byte, then the path: an LPM key holds at most 256 bytes */
};

struct addr_key {
	__u32 prefixlen;
	__u8 data[20];         /* hook byte, then the IPv6 (or IPv4-mapped) address */
};

struct binary_masks {
	__u64 as_binary;       /* rules whose binaries selector lists this binary */
	__u64 as_parent;       /* rules whose parent_binaries selector lists it */
};

struct proc_state {
	struct binary_masks masks;
	char binary[SEC_PATH_LEN];
};

struct rule_stats {
	__u64 matches;
	__u64 actions;         /* signals sent */
	__u64 limited;         /* events not posted: rate limit */
	__u64 lost;            /* events not posted: ring buffer full */
};

struct rate_state {
	__u64 window_start;
	__u64 count;
};

struct scratch {
	struct path_key key;
	struct path_key rkey;
	struct proc_state proc;
};

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, MAX_RULES);
	 __type(key, __u32); __type(value, struct rule); } rules SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, HOOK_MAX);
	 __type(key, __u32); __type(value, struct hook_conf); } hooks SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __uint(map_flags, BPF_F_NO_PREALLOC);
	 __type(key, struct path_key); __type(value, __u64); } paths SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __uint(map_flags, BPF_F_NO_PREALLOC);
	 __type(key, struct path_key); __type(value, __u64); } postfixes SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __uint(map_flags, BPF_F_NO_PREALLOC);
	 __type(key, struct addr_key); __type(value, __u64); } addrs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __uint(map_flags, BPF_F_NO_PREALLOC);
	 __type(key, struct path_key); __type(value, struct binary_masks); } binaries SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LRU_HASH); __uint(max_entries, 32768);
	 __type(key, __u32); __type(value, struct proc_state); } procs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, MAX_RULES);
	 __type(key, __u32); __type(value, struct rule_stats); } stats SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, MAX_RULES);
	 __type(key, __u32); __type(value, struct rate_state); } rates SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, struct scratch); } scratch_map SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 20); } security_events SEC(".maps");

/* Keeps struct security_event in the object's BTF for the layout check. */
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, struct security_event); } event_layout SEC(".maps");

static __always_inline struct scratch *get_scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&scratch_map, &zero);
}

static __always_inline struct hook_conf *conf_of(__u32 hook)
{
	return bpf_map_lookup_elem(&hooks, &hook);
}

static __always_inline __u32 current_pidns(struct task_struct *task)
{
	return BPF_CORE_READ(task, nsproxy, pid_ns_for_children, ns.inum);
}

static __always_inline bool in_cgroups(struct rule *r)
{
	__u64 ids[MAX_CGROUP_LEVELS];
	int levels = 0;

	/* The current cgroup and its ancestors, so a rule on a cgroup covers its children. */
	for (int l = MAX_CGROUP_LEVELS - 1; l >= 0; l--) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(l);
		if (id)
			ids[levels++ & (MAX_CGROUP_LEVELS - 1)] = id;
	}
	for (int i = 0; i < MAX_VALUES; i++) {
		if (i >= r->n_cgroups)
			break;
		for (int j = 0; j < MAX_CGROUP_LEVELS; j++) {
			if (j >= levels)
				break;
			if (ids[j] == r->cgroups[i])
				return true;
		}
	}
	return false;
}

static __always_inline bool value_in(__u64 *values, __u32 n, __u64 v)
{
	for (int i = 0; i < MAX_VALUES; i++) {
		if (i >= n)
			break;
		if (values[i] == v)
			return true;
	}
	return false;
}

static __always_inline bool uid_in(struct rule *r, __u32 uid)
{
	for (int i = 0; i < MAX_VALUES; i++) {
		if (i >= r->n_uids)
			break;
		if (r->uids[i] == uid)
			return true;
	}
	return false;
}

static __always_inline bool bit(__u64 mask, __u32 i)
{
	return (mask >> i) & 1;
}

/* Selectors that do not depend on the syscall's arguments. */
static __always_inline bool selectors_pass(struct rule *r, __u32 i, __u64 bin, __u64 par, __u32 uid, __u32 pidns)
{
	__u32 f = r->flags;

	if ((f & R_BIN_IN) && !bit(bin, i))
		return false;
	if ((f & R_BIN_NOTIN) && bit(bin, i))
		return false;
	if ((f & R_PARENT_IN) && !bit(par, i))
		return false;
	if ((f & R_PARENT_NOTIN) && bit(par, i))
		return false;
	if ((f & R_UID_IN) && !uid_in(r, uid))
		return false;
	if ((f & R_UID_NOTIN) && uid_in(r, uid))
		return false;
	if ((f & R_CONTAINER) && pidns == host_pidns)
		return false;
	if ((f & R_HOST) && pidns != host_pidns)
		return false;
	if ((f & R_CGROUP) && !in_cgroups(r))
		return false;
	return true;
}

/* true: post an event; false: the rate limit says no. Racy across CPUs by a few events. */
static __always_inline bool rate_allows(struct rule *r, __u32 i, __u64 now)
{
	struct rate_state *s;

	if (!r->rate_limit)
		return true;
	s = bpf_map_lookup_elem(&rates, &i);
	if (!s)
		return true;
	if (now - s->window_start >= r->rate_window_ns) {
		s->window_start = now;
		s->count = 0;
	}
	return __sync_fetch_and_add(&s->count, 1) < r->rate_limit;
}

struct match_args {
	__u32 hook;
	__u32 syscall;
	__u32 intent;          /* file: INTENT_* of this open */
	__u32 str_len;
	__u64 args[3];
	__u64 value;           /* compared with rule values[] (port, target id, request) */
	__u64 value2;          /* a second candidate (setres*id: the other ids), ~0 if none */
	__u64 value3;
	__u8 *addr;            /* connect: 16 bytes */
	char *str;             /* SEC_PATH_LEN bytes, may be NULL */
};

static __always_inline bool values_match(struct rule *r, struct match_args *m)
{
	if (!(r->flags & R_VALUES))
		return true;
	return value_in(r->values, r->n_values, m->value) ||
	       (m->value2 != ~0ULL && value_in(r->values, r->n_values, m->value2)) ||
	       (m->value3 != ~0ULL && value_in(r->values, r->n_values, m->value3));
}

static __always_inline void post(__u32 i, __u32 action, __u32 sig, struct match_args *m, struct task_struct *task)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct proc_state *self;
	struct security_event *e = bpf_ringbuf_reserve(&security_events, sizeof(*e), 0);
	struct rule_stats *st = bpf_map_lookup_elem(&stats, &i);
	__u64 uid_gid = bpf_get_current_uid_gid();
	struct task_struct *t = task;

	if (!e) {
		if (st)
			st->lost++;
		return;
	}
	e->ktime_ns = bpf_ktime_get_ns();
	e->start_time_ns = BPF_CORE_READ(task, group_leader, start_time);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->args[0] = m->args[0];
	e->args[1] = m->args[1];
	e->args[2] = m->args[2];
	e->rule = i;
	e->hook = m->hook;
	e->syscall = m->syscall;
	e->action = action;
	e->signal = sig;
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->pidns = current_pidns(task);
	e->str_len = m->str_len;
	if (m->addr)
		__builtin_memcpy(e->addr, m->addr, 16);
	else
		__builtin_memset(e->addr, 0, 16);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	self = bpf_map_lookup_elem(&procs, &tgid);
	if (self)
		bpf_probe_read_kernel(e->binary, sizeof(e->binary), self->binary);
	else
		e->binary[0] = 0;
	if (m->str)
		bpf_probe_read_kernel(e->str, sizeof(e->str), m->str);
	else
		e->str[0] = 0;
	t = BPF_CORE_READ(task, group_leader);
	for (int a = 0; a < SEC_ANCESTORS; a++) {
		struct task_struct *p = BPF_CORE_READ(t, real_parent);
		__u32 pid = p ? BPF_CORE_READ(p, tgid) : 0;

		if (!p || pid == BPF_CORE_READ(t, tgid) || pid == 0) {
			e->ancestors[a].pid = 0;
			e->ancestors[a].start_time_ns = 0;
			e->ancestors[a].comm[0] = 0;
			t = p;
			continue;
		}
		e->ancestors[a].pid = pid;
		e->ancestors[a].start_time_ns = BPF_CORE_READ(p, start_time);
		BPF_CORE_READ_STR_INTO(&e->ancestors[a].comm, p, comm);
		t = pid == 1 ? NULL : p; /* init has no parent of ours to show */
	}
	bpf_ringbuf_submit(e, 0);
}

struct apply_ctx {
	struct match_args *m;
	struct task_struct *task;
	__u64 candidates;
	__u64 bin;             /* binary selector mask of the process */
	__u64 par;             /* parent selector mask of its parent */
	__u64 now;
	__u32 uid;
	__u32 pidns;
	bool killed;
};

/* One rule; a bpf_loop callback, so the verifier checks it once rather than per rule. */
static long apply_rule(__u32 i, struct apply_ctx *c)
{
	struct match_args *m = c->m;
	struct rule_stats *st;
	struct rule *r;
	__u32 action, sig = 0;

	if (!bit(c->candidates, i))
		return 0;
	r = bpf_map_lookup_elem(&rules, &i);
	if (!r || r->hook != m->hook)
		return 0;
	if (r->intent && !(r->intent & m->intent))
		return 0;
	if (!values_match(r, m) || !selectors_pass(r, i, c->bin, c->par, c->uid, c->pidns))
		return 0;
	st = bpf_map_lookup_elem(&stats, &i);
	if (st)
		st->matches++;
	action = r->action;
	if (action == ACTION_SIGKILL)
		sig = 9;
	else if (action == ACTION_SIGNAL)
		sig = r->signal;
	if (sig && !c->killed) {
		bpf_send_signal(sig);
		c->killed = sig == 9;
		if (st)
			st->actions++;
	}
	if (!rate_allows(r, i, c->now)) {
		if (st)
			st->limited++;
		return 0;
	}
	post(i, action, sig, m, c->task);
	return 0;
}

/* Check the candidate rules in order and apply every one that matches. */
static __always_inline void apply(__u64 candidates, struct match_args *m)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 ppid = BPF_CORE_READ(task, real_parent, tgid);
	struct proc_state *st = bpf_map_lookup_elem(&procs, &pid);
	struct apply_ctx c = {
		.m = m, .task = task, .candidates = candidates, .now = bpf_ktime_get_ns(),
		.uid = (__u32)bpf_get_current_uid_gid(), .pidns = current_pidns(task),
	};

	if (st)
		c.bin = st->masks.as_binary;
	st = bpf_map_lookup_elem(&procs, &ppid);
	if (st)
		c.par = st->masks.as_parent;
	bpf_loop(MAX_RULES, apply_rule, &c, 0);
}

/* Match a user-space path (or string) argument against the hook's rules. */
static __always_inline int match_path(__u32 hook, __u32 syscall, const char *upath, __u32 intent,
				      __u64 a0, __u64 a1, __u64 a2)
{
	struct hook_conf *c = conf_of(hook);
	struct scratch *s;
	struct match_args m = {};
	__u64 candidates, found = 0, *mask;
	long n;

	if (!c || !c->rules)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	s->key.data[0] = hook;
	n = upath ? bpf_probe_read_user_str(&s->key.data[1], SEC_PATH_LEN - 1, upath) : -1;
	if (n <= 0) {
		n = 1;
		s->key.data[1] = 0;
	}
	m.str_len = n - 1;
	if (c->in_rules | c->notin_rules) {
		s->key.prefixlen = (1 + n) * 8;
		mask = bpf_map_lookup_elem(&paths, &s->key);
		if (mask)
			found |= *mask;
		if (c->postfix) {
			__u32 len = n - 1;

			s->rkey.data[0] = hook;
			for (__u32 i = 0; i < SEC_PATH_LEN - 2; i++) {
				if (i >= len)
					break;
				s->rkey.data[(1 + i) & 0xff] = s->key.data[(len - i) & 0xff];
			}
			s->rkey.prefixlen = (1 + len) * 8;
			mask = bpf_map_lookup_elem(&postfixes, &s->rkey);
			if (mask)
				found |= *mask;
		}
	}
	candidates = (c->rules & ~(c->in_rules | c->notin_rules)) | (c->in_rules & found) | (c->notin_rules & ~found);
	if (!candidates)
		return 0;
	m.hook = hook;
	m.syscall = syscall;
	m.intent = intent;
	m.args[0] = a0;
	m.args[1] = a1;
	m.args[2] = a2;
	m.value = a0;
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.str = (char *)&s->key.data[1];
	apply(candidates, &m);
	return 0;
}

static __always_inline __u32 open_intent(__u64 flags)
{
	__u32 acc = flags & 3; /* O_ACCMODE */
	__u32 intent = acc == 0 ? INTENT_READ : acc == 1 ? INTENT_WRITE : INTENT_READ | INTENT_WRITE;

	if (flags & (0x40 | 0x200)) /* O_CREAT, O_TRUNC change the file too */
		intent |= INTENT_WRITE;
	return intent;
}

/* --- file --------------------------------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_openat")
int sec_openat(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_FILE, SYS_OPENAT, (const char *)ctx->args[1], open_intent(ctx->args[2]),
			  ctx->args[2], ctx->args[3], ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int sec_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return match_path(HOOK_FILE, SYS_OPENAT2, (const char *)ctx->args[1], open_intent(how.flags),
			  how.flags, how.mode, ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int sec_open(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_FILE, SYS_OPEN, (const char *)ctx->args[0], open_intent(ctx->args[1]),
			  ctx->args[1], ctx->args[2], (__u64)-100);
}

SEC("tracepoint/syscalls/sys_enter_creat")
int sec_creat(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_FILE, SYS_CREAT, (const char *)ctx->args[0], INTENT_WRITE,
			  0x241 /* O_CREAT|O_WRONLY|O_TRUNC */, ctx->args[1], (__u64)-100);
}

/* --- exec and mount: the path given ---------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_execve")
int sec_execve(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_EXEC, SYS_EXECVE, (const char *)ctx->args[0], 0, 0, 0, (__u64)-100);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int sec_execveat(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_EXEC, SYS_EXECVEAT, (const char *)ctx->args[1], 0, ctx->args[4], 0, ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_mount")
int sec_mount(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_MOUNT, SYS_MOUNT, (const char *)ctx->args[1], 0, ctx->args[3], 0, 0);
}

/* --- module loads ---------------------------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_init_module")
int sec_init_module(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_MODULE, SYS_INIT_MODULE, (const char *)ctx->args[2], 0, ctx->args[1], 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_finit_module")
int sec_finit_module(struct trace_event_raw_sys_enter *ctx)
{
	return match_path(HOOK_MODULE, SYS_FINIT_MODULE, (const char *)ctx->args[1], 0, ctx->args[0], ctx->args[2], 0);
}

/* --- numeric arguments: privilege changes and ptrace ----------------------------------------- */

static __always_inline int match_values(__u32 hook, __u32 syscall, __u64 a0, __u64 a1, __u64 a2, int nvalues)
{
	struct hook_conf *c = conf_of(hook);
	struct match_args m = {};

	if (!c || !c->rules)
		return 0;
	m.hook = hook;
	m.syscall = syscall;
	m.args[0] = a0;
	m.args[1] = a1;
	m.args[2] = a2;
	m.value = a0;
	/* -1 means "unchanged" for the set*id calls: never a match */
	m.value2 = nvalues > 1 && (__u32)a1 != (__u32)-1 ? (__u32)a1 : ~0ULL;
	m.value3 = nvalues > 2 && (__u32)a2 != (__u32)-1 ? (__u32)a2 : ~0ULL;
	if (nvalues > 0 && (__u32)a0 == (__u32)-1 && hook == HOOK_PRIVILEGE)
		m.value = ~0ULL;
	apply(c->rules, &m);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_setuid")
int sec_setuid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETUID, ctx->args[0], 0, 0, 1);
}

SEC("tracepoint/syscalls/sys_enter_setgid")
int sec_setgid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETGID, ctx->args[0], 0, 0, 1);
}

SEC("tracepoint/syscalls/sys_enter_setreuid")
int sec_setreuid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETREUID, ctx->args[0], ctx->args[1], 0, 2);
}

SEC("tracepoint/syscalls/sys_enter_setregid")
int sec_setregid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETREGID, ctx->args[0], ctx->args[1], 0, 2);
}

SEC("tracepoint/syscalls/sys_enter_setresuid")
int sec_setresuid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETRESUID, ctx->args[0], ctx->args[1], ctx->args[2], 3);
}

SEC("tracepoint/syscalls/sys_enter_setresgid")
int sec_setresgid(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PRIVILEGE, SYS_SETRESGID, ctx->args[0], ctx->args[1], ctx->args[2], 3);
}

SEC("tracepoint/syscalls/sys_enter_capset")
int sec_capset(struct trace_event_raw_sys_enter *ctx)
{
	struct { __u32 effective, permitted, inheritable; } data = {};

	bpf_probe_read_user(&data, sizeof(data), (void *)ctx->args[1]);
	/* no id to compare: values never match a capset, a rule with ids skips it */
	return match_values(HOOK_PRIVILEGE, SYS_CAPSET, ~0ULL, data.effective, data.permitted, 0);
}

SEC("tracepoint/syscalls/sys_enter_ptrace")
int sec_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_PTRACE, SYS_PTRACE, ctx->args[0], ctx->args[1], 0, 1);
}

/* --- connect ----------------------------------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_connect")
int sec_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct hook_conf *c = conf_of(HOOK_CONNECT);
	struct match_args m = {};
	struct addr_key key = {};
	struct sockaddr_in6 sa = {};
	__u64 found = 0, candidates, *mask;
	__u16 port;

	if (!c || !c->rules)
		return 0;
	bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), (void *)ctx->args[1]);
	if (sa.sin6_family == 2) { /* AF_INET: as ::ffff:a.b.c.d */
		struct sockaddr_in *in = (struct sockaddr_in *)&sa;
		__u32 a = in->sin_addr.s_addr;

		port = in->sin_port;
		key.data[11] = 0xff;
		key.data[12] = 0xff;
		__builtin_memcpy(&key.data[13], &a, 4);
	} else if (sa.sin6_family == 10) { /* AF_INET6 */
		bpf_probe_read_user(&sa, sizeof(sa), (void *)ctx->args[1]);
		port = sa.sin6_port;
		__builtin_memcpy(&key.data[1], &sa.sin6_addr, 16);
	} else {
		return 0; /* unix and other families: not an address this hook matches */
	}
	key.data[0] = HOOK_CONNECT;
	key.prefixlen = 8 + 128;
	mask = bpf_map_lookup_elem(&addrs, &key);
	if (mask)
		found = *mask;
	candidates = (c->rules & ~(c->in_rules | c->notin_rules)) | (c->in_rules & found) | (c->notin_rules & ~found);
	if (!candidates)
		return 0;
	port = bpf_ntohs(port);
	m.hook = HOOK_CONNECT;
	m.syscall = SYS_CONNECT;
	m.args[0] = port;
	m.args[1] = sa.sin6_family;
	m.args[2] = ctx->args[0];
	m.value = port;
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.addr = &key.data[1];
	apply(candidates, &m);
	return 0;
}

/* --- per-process binary selectors, evaluated once per exec ---------------------------------- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sec_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct scratch *s = get_scratch();
	struct binary_masks *found;
	__u32 pid = BPF_CORE_READ(p, tgid);
	long n;

	if (!s)
		return 0;
	__builtin_memset(&s->proc, 0, sizeof(s->proc));
	n = bpf_probe_read_kernel_str(&s->key.data[1], SEC_PATH_LEN - 1, BPF_CORE_READ(bprm, filename));
	if (n <= 0)
		return 0;
	s->key.data[0] = 0;
	s->key.prefixlen = (1 + n) * 8;
	found = bpf_map_lookup_elem(&binaries, &s->key);
	if (found)
		s->proc.masks = *found;
	bpf_probe_read_kernel(s->proc.binary, SEC_PATH_LEN - 1, &s->key.data[1]);
	bpf_map_update_elem(&procs, &pid, &s->proc, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sec_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ppid = BPF_CORE_READ(parent, tgid);
	__u32 pid = BPF_CORE_READ(child, tgid);
	struct proc_state *st;

	if (pid == ppid) /* a thread: shares its process's state */
		return 0;
	st = bpf_map_lookup_elem(&procs, &ppid);
	if (st)
		bpf_map_update_elem(&procs, &pid, st, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sec_exit, struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, tgid);

	if (BPF_CORE_READ(p, pid) == pid)
		bpf_map_delete_elem(&procs, &pid);
	return 0;
}
