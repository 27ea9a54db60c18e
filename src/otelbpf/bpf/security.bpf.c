// SPDX-License-Identifier: GPL-2.0
/* Security policies matched in the kernel: file opens, execs, connects, privilege changes,
 * module loads, ptrace, mount, namespaces and BPF program loads, on syscall tracepoints and
 * sched_process_exec (kprobes, fentry and LSM do not load on the kernels here).
 *
 * User space compiles policies into map contents: a rule table, per-hook rule masks, LPM
 * tries of path prefixes (exact paths end with their NUL, so they are prefixes too) and of
 * reversed paths (postfix matching), an LPM trie of CIDRs, and one of binary paths that is
 * looked up once per exec so that binary selectors cost one map read at match time. Each
 * trie value is the mask of rules whose value is a prefix of the key: the longest match is
 * the union of every rule that matches. Only matches reach the ring buffer.
 *
 * File opens are matched at syscall exit on the file the kernel opened, not on the string
 * the process passed: the new fd's struct file is taken from the task's fd table and its path
 * is built from f_path by walking dentries and mounts up to the process's root (as d_path
 * does, so it is the path the process would see in its own mount namespace). The opened
 * inode, and its directories for Prefix rules, are also looked up by (device, inode), which
 * user space resolves at policy load: hard links and bind mounts match too. Execs match the
 * file the kernel executed (bprm->file) at sched_process_exec. Cheapest first: an inode is
 * checked against a bloom filter before its hash lookup, and the walked path is copied and
 * looked up only if its first component is one a rule starts with (or Postfix rules need it).
 *
 * A kill is bpf_send_signal(SIGKILL): the process dies on its way back to user space, before
 * its next instruction. The syscall itself has run: at an open's exit the file is open (and
 * created or truncated if the flags said so); at an exec the new image is loaded, not run.
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

enum hook { HOOK_FILE = 1, HOOK_EXEC, HOOK_CONNECT, HOOK_PRIVILEGE, HOOK_MODULE, HOOK_PTRACE, HOOK_MOUNT, HOOK_BPF,
	    HOOK_NAMESPACE, HOOK_MAX };
enum action { ACTION_POST = 1, ACTION_SIGKILL, ACTION_SIGNAL };
enum syscall {
	SYS_OPENAT = 1, SYS_OPENAT2, SYS_OPEN, SYS_CREAT, SYS_EXECVE, SYS_EXECVEAT, SYS_CONNECT,
	SYS_SETUID, SYS_SETGID, SYS_SETREUID, SYS_SETREGID, SYS_SETRESUID, SYS_SETRESGID, SYS_CAPSET,
	SYS_INIT_MODULE, SYS_FINIT_MODULE, SYS_PTRACE, SYS_MOUNT, SYS_BPF, SYS_IOCTL, SYS_SETNS, SYS_UNSHARE,
	SYS_OPEN_BY_HANDLE_AT,
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

#define PATH_DEPTH 32          /* path components resolved in the kernel (deeper: cut at the top) */
#define MOUNT_HOPS 8           /* mounts crossed on the way up */
#define ID_FILE 1              /* hook_conf.filters: the opened inode is looked up by identity */
#define ID_DIR 2               /* ... and its directories (Prefix rules on a directory) */
#define EVERY_PATH 4           /* every path goes to the tries (Postfix rules, "/", a partial first name) */
#define BLOOM_BITS 4096
#define NSFS_MAGIC 0x6e736673

/* The host's pid namespace: processes in another one count as "in a container". */
const volatile __u32 host_pidns = 0;
/* The agent: its own BPF loads are not audit events. */
const volatile __u32 self_pid = 0;

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
	__u32 filters;         /* ID_*, EVERY_PATH: the lookups the hook's rules need */
};

struct path_key {
	__u32 prefixlen;
	__u8 data[SEC_PATH_LEN]; /* hook byte, then the path: an LPM key holds at most 256 bytes */
};

/* A protected file or directory by identity, resolved by user space at policy load. */
struct inode_key {
	__u8 hook;
	__u8 kind;             /* ID_FILE: the inode itself is opened; ID_DIR: something below it */
	__u16 _pad;
	__u32 dev;             /* the superblock's s_dev (kernel encoding: major << 20 | minor) */
	__u64 ino;
};

/* Inode numbers in `inodes`, as bits: most opens are told "not protected" by one load. */
struct id_bloom {
	__u64 words[BLOOM_BITS / 64];
};

/* The first component of rule paths (as "etc" of /etc/shadow): a path whose first component is
 * none of them matches no Equal or Prefix rule, and is not copied. Names compare on their first
 * 16 bytes and length: a false "maybe" costs the copy and lookup, never a miss. */
struct first_name {
	__u32 hook;
	__u32 len;
	__u64 name[2];
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

/* Pass one of the path walk keeps each component's name; pass two copies them in order. What
 * changes from step to step lives here, in a map value, not on the stack: the verifier does
 * not follow map contents, so it checks each step's callback once rather than per step. */
struct walk {
	const unsigned char *names[PATH_DEPTH];
	__u32 lens[PATH_DEPTH];
	__u64 dentry;          /* where the walk is (numbers: each step casts them back) */
	__u64 mnt;             /* struct mount of that dentry */
	__u64 found;           /* identity matches of the directories on the way */
	__u32 n;               /* components kept */
	__u32 off;             /* pass two: bytes of the key written (hook byte included) */
	__u32 complete;        /* reached the process's root (or its namespace's) */
	__u32 _pad;
};

struct scratch {
	struct path_key key;
	__u8 key_slack[SEC_PATH_LEN]; /* a bound the verifier can see for copies into key */
	struct path_key rkey;
	struct proc_state proc;
	struct walk walk;
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
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096);
	 __type(key, struct inode_key); __type(value, __u64); } inodes SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
	 __type(key, __u32); __type(value, struct id_bloom); } inode_bloom SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024);
	 __type(key, struct first_name); __type(value, __u8); } first_names SEC(".maps");
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
	struct sec_bpf *bpf;   /* bpf: the program, may be NULL */
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
	if (m->bpf)
		__builtin_memcpy(&e->bpf, m->bpf, sizeof(e->bpf));
	else
		__builtin_memset(&e->bpf, 0, sizeof(e->bpf));
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

/* v & 0xff, kept from the compiler's optimiser: the verifier must see the bound. */
static __always_inline __u32 byte_index(__u32 v)
{
	barrier_var(v);
	return v & 0xff;
}

struct reverse_ctx {
	struct scratch *s;
	__u32 len;
};

/* rkey = key reversed, one byte per call (a bpf_loop callback: verified once). */
static long reverse_step(__u32 i, struct reverse_ctx *r)
{
	if (i >= r->len)
		return 1;
	r->s->rkey.data[byte_index(1 + i)] = r->s->key.data[byte_index(r->len - i)];
	return 0;
}

/* The rules whose trie filter (in or not in) the lookups found, with those that have none. */
static __always_inline __u64 candidates_of(struct hook_conf *c, __u64 found)
{
	return (c->rules & ~(c->in_rules | c->notin_rules)) | (c->in_rules & found) | (c->notin_rules & ~found);
}

/* Rules whose paths match the path in s->key.data[1..len] (NUL-terminated): the prefix trie,
 * and the postfix trie with the path reversed when some rule matches path ends. */
static __always_inline __u64 path_matches(struct hook_conf *c, struct scratch *s, __u32 hook, __u32 len)
{
	__u64 found = 0, *mask;

	s->key.data[0] = hook;
	s->key.prefixlen = (2 + len) * 8;
	mask = bpf_map_lookup_elem(&paths, &s->key);
	if (mask)
		found |= *mask;
	if (c->postfix) {
		struct reverse_ctx r = { .s = s, .len = len };

		s->rkey.data[0] = hook;
		bpf_loop(SEC_PATH_LEN - 2, reverse_step, &r, 0);
		s->rkey.prefixlen = (1 + len) * 8;
		mask = bpf_map_lookup_elem(&postfixes, &s->rkey);
		if (mask)
			found |= *mask;
	}
	return found;
}

/* Match a user-space string argument (mount target, module parameters) against the hook's rules. */
static __always_inline int match_path(__u32 hook, __u32 syscall, const char *upath, __u32 intent,
				      __u64 a0, __u64 a1, __u64 a2)
{
	struct hook_conf *c = conf_of(hook);
	struct scratch *s;
	struct match_args m = {};
	__u64 candidates, found = 0;
	long n;

	if (!c || !c->rules)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	n = upath ? bpf_probe_read_user_str(&s->key.data[1], SEC_PATH_LEN - 1, upath) : -1;
	if (n <= 0) {
		n = 1;
		s->key.data[1] = 0;
	}
	m.str_len = n - 1;
	if (c->in_rules | c->notin_rules)
		found = path_matches(c, s, hook, n - 1);
	candidates = candidates_of(c, found);
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

/* --- the path of an open file, as its process sees it ---------------------------------------- */

/* A kfunc the verifier turns into a plain move: it makes a pointer read from kernel memory a
 * typed (read-only, untrusted) one, so the walk is direct loads, not a helper call per field. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define KERNEL_CAST(type, ptr) ((type *)bpf_rdonly_cast((const void *)(ptr), bpf_core_type_id_kernel(type)))

/* Rules protecting this inode (kind ID_FILE) or something below it (ID_DIR). */
static __always_inline __u64 identity_matches(struct inode *inode, __u32 hook, __u8 kind)
{
	struct inode_key k = {};
	struct id_bloom *bloom;
	__u32 zero = 0, bit;
	__u64 *mask, ino;

	if (!inode)
		return 0;
	ino = inode->i_ino;
	bloom = bpf_map_lookup_elem(&inode_bloom, &zero);
	bit = (ino * 0x9E3779B97F4A7C15ULL) >> 52; /* 12 bits: BLOOM_BITS */
	if (!bloom || !((bloom->words[(bit >> 6) & 63] >> (bit & 63)) & 1))
		return 0;
	k.hook = hook;
	k.kind = kind;
	k.dev = inode->i_sb->s_dev;
	k.ino = ino;
	mask = bpf_map_lookup_elem(&inodes, &k);
	return mask ? *mask : 0;
}

struct walk_ctx {
	struct scratch *s;
	__u64 root_dentry;     /* the process's root */
	__u64 root_mnt;        /* its struct vfsmount */
	__u32 hook;
	__u32 filters;
};

/* Pass one, one step up as d_path goes (at a mount's root, to the mountpoint in the parent
 * mount): only loads, the names are copied by pass two if the path is wanted at all. */
static long walk_step(__u32 i, struct walk_ctx *w)
{
	struct walk *v = &w->s->walk;
	struct dentry *d = KERNEL_CAST(struct dentry, v->dentry);
	struct mount *mnt = KERNEL_CAST(struct mount, v->mnt);
	struct dentry *mnt_root = mnt->mnt.mnt_root;
	struct dentry *parent = d->d_parent;
	__u32 n = v->n;

	if (v->dentry == w->root_dentry && v->mnt + bpf_core_field_offset(struct mount, mnt) == w->root_mnt) {
		v->complete = 1;
		return 1;
	}
	if ((w->filters & ID_DIR) && i > 0) /* a directory above the file, mount roots included */
		v->found |= identity_matches(d->d_inode, w->hook, ID_DIR);
	if (d == mnt_root || d == parent) {
		struct mount *up = mnt->mnt_parent;

		if (d != mnt_root && n == 0) /* a pseudo file (nsfs, pipe, socket): pass two names it */
			return 1;
		if (up == mnt || d != mnt_root) { /* the namespace's root, or a dentry cut loose */
			v->complete = 1;
			return 1;
		}
		v->dentry = (__u64)mnt->mnt_mountpoint;
		v->mnt = (__u64)up;
		return 0;
	}
	if (n >= PATH_DEPTH)
		return 1; /* deeper than we resolve: the top components are left out */
	v->names[n & (PATH_DEPTH - 1)] = d->d_name.name;
	v->lens[n & (PATH_DEPTH - 1)] = d->d_name.len;
	v->n = n + 1;
	v->dentry = (__u64)parent;
	return 0;
}

/* Pass two: component j from the top, after a '/' (none before the first of a cut path). */
static long copy_step(__u32 j, struct walk_ctx *w)
{
	struct scratch *s = w->s;
	struct walk *v = &s->walk;
	__u32 off = v->off, idx, len;

	if (j >= v->n || off >= SEC_PATH_LEN - 2)
		return 1;
	idx = (v->n - 1 - j) & (PATH_DEPTH - 1);
	if (j > 0 || v->complete)
		s->key.data[byte_index(off++)] = '/';
	len = v->lens[idx];
	if (len > SEC_PATH_LEN - 2 - off)
		len = SEC_PATH_LEN - 2 - off;
	len = byte_index(len);
	bpf_probe_read_kernel(&s->key.data[byte_index(off)], len, v->names[idx]);
	v->off = off + len;
	return 0;
}

/* Pass one from (dentry, vfsmnt) up to the current process's root. */
static __always_inline void walk_up(struct walk_ctx *w, struct scratch *s, struct dentry *dentry,
				    struct vfsmount *vfsmnt, __u32 hook, __u32 filters)
{
	struct task_struct *task = bpf_get_current_task_btf();

	w->s = s;
	s->walk.dentry = (__u64)dentry;
	s->walk.mnt = (__u64)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	s->walk.found = 0;
	s->walk.n = 0;
	s->walk.complete = 0;
	w->root_dentry = (__u64)task->fs->root.dentry;
	w->root_mnt = (__u64)task->fs->root.mnt;
	w->hook = hook;
	w->filters = filters;
	bpf_loop(PATH_DEPTH + MOUNT_HOPS, walk_step, w, 0);
}

/* Whether the walked path's first component is one some Equal or Prefix rule starts with. */
static __always_inline bool first_name_listed(struct walk_ctx *w)
{
	struct walk *v = &w->s->walk;
	struct first_name k = {};
	__u32 top, len;

	if (!v->complete || !v->n)
		return false;
	top = (v->n - 1) & (PATH_DEPTH - 1);
	len = v->lens[top];
	k.hook = w->hook;
	k.len = len;
	bpf_probe_read_kernel(k.name, sizeof(k.name), v->names[top]);
	if (len < 8) {
		k.name[0] &= (1ULL << (8 * len)) - 1;
		k.name[1] = 0;
	} else if (len < 16) {
		k.name[1] &= (1ULL << (8 * (len - 8))) - 1;
	}
	return bpf_map_lookup_elem(&first_names, &k) != 0;
}

/* Pass two: the walked path into s->key.data[1..] (NUL-terminated, cut at SEC_PATH_LEN - 2
 * bytes); returns its length. A path deeper than PATH_DEPTH lacks its top and its leading '/':
 * no absolute rule matches it. */
static __always_inline __u32 path_from_walk(struct walk_ctx *w)
{
	struct scratch *s = w->s;
	__u32 off;

	if (!s->walk.complete && !s->walk.n) { /* a dentry of no tree (nsfs, pipefs, sockfs, anon
						* inodes): as d_path names it, "mnt:[4026531841]",
						* else "<fs>:[inode]" */
		struct dentry *d = KERNEL_CAST(struct dentry, s->walk.dentry);
		struct super_block *sb = d->d_sb;
		__u64 data[2] = { (__u64)sb->s_type->name, d->d_inode->i_ino };
		long n;

		if (sb->s_magic == NSFS_MAGIC)
			data[0] = (__u64)KERNEL_CAST(struct ns_common, d->d_inode->i_private)->ops->name;
		n = bpf_snprintf((char *)&s->key.data[1], SEC_PATH_LEN - 1, "%s:[%llu]", data, sizeof(data));
		off = n > 0 && n < SEC_PATH_LEN - 1 ? n : 1;
		s->key.data[byte_index(off)] = 0;
		return off - 1;
	}

	s->walk.off = 1;
	bpf_loop(PATH_DEPTH, copy_step, w, 0);
	off = s->walk.off;
	if (off == 1)
		s->key.data[off++] = '/';
	if (off > SEC_PATH_LEN - 1)
		off = SEC_PATH_LEN - 1;
	s->key.data[byte_index(off)] = 0;
	return off - 1;
}

/* Rules matching an opened or executed file: its identity (inodes), and its path (tries) when
 * the path can match or is wanted anyway (want_path; *len is 0 when it was not built). */
static __always_inline __u64 file_matches(struct hook_conf *c, struct scratch *s, struct file *f, __u32 hook,
					  bool want_path, __u32 *len)
{
	struct walk_ctx w = {};
	__u64 found = 0;

	if (c->filters & ID_FILE)
		found |= identity_matches(f->f_inode, hook, ID_FILE);
	walk_up(&w, s, f->f_path.dentry, f->f_path.mnt, hook, c->filters);
	found |= s->walk.found;
	*len = 0;
	if (!found && !want_path && !(c->filters & EVERY_PATH) && !first_name_listed(&w))
		return 0;
	*len = path_from_walk(&w);
	return found | path_matches(c, s, hook, *len);
}

/* The struct file of the current process's fd, or NULL. */
static __always_inline struct file *file_of_fd(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file *file = 0;

	if (!fdt || fd < 0 || fd >= fdt->max_fds)
		return 0;
	/* fdt->fd is an array of pointers: the one read the verifier cannot type. */
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	return file ? KERNEL_CAST(struct file, file) : 0;
}

/* --- file: at the exit of an open, the file it opened ---------------------------------------- */

#define FMODE_READ 0x1
#define FMODE_WRITE 0x2
#define O_CREAT 0x40
#define O_TRUNC 0x200

/* Rules on an open that returned fd `ret`. Cheapest first: no file rule, a failed open; then
 * the walk and the lookups; the syscall's flags are read from its saved registers only for a
 * match. */
static __always_inline int match_open(__u32 syscall, long ret)
{
	struct hook_conf *c = conf_of(HOOK_FILE);
	struct task_struct *task;
	struct match_args m = {};
	struct pt_regs *regs;
	struct scratch *s;
	struct file *f;
	__u64 candidates, flags = 0, mode = 0, dirfd = (__u64)-100;
	__u32 len, fmode;

	if (!c || !c->rules || ret < 0)
		return 0;
	task = bpf_get_current_task_btf();
	f = file_of_fd(task, ret);
	s = get_scratch();
	if (!f || !s)
		return 0;
	candidates = candidates_of(c, file_matches(c, s, f, HOOK_FILE, false, &len));
	if (!candidates)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (syscall == SYS_OPENAT) {
		dirfd = PT_REGS_PARM1_CORE_SYSCALL(regs);
		flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
		mode = PT_REGS_PARM4_CORE_SYSCALL(regs);
	} else if (syscall == SYS_OPENAT2) {
		struct open_how how = {};

		bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
		dirfd = PT_REGS_PARM1_CORE_SYSCALL(regs);
		flags = how.flags;
		mode = how.mode;
	} else if (syscall == SYS_OPEN_BY_HANDLE_AT) {
		dirfd = PT_REGS_PARM1_CORE_SYSCALL(regs); /* the mount's fd */
		flags = PT_REGS_PARM3_CORE_SYSCALL(regs);
	} else if (syscall == SYS_OPEN) {
		flags = PT_REGS_PARM2_CORE_SYSCALL(regs);
		mode = PT_REGS_PARM3_CORE_SYSCALL(regs);
	} else {
		flags = 0x241; /* creat: O_CREAT|O_WRONLY|O_TRUNC */
		mode = PT_REGS_PARM2_CORE_SYSCALL(regs);
	}
	fmode = f->f_mode;
	m.intent = (fmode & FMODE_READ ? INTENT_READ : 0) | (fmode & FMODE_WRITE ? INTENT_WRITE : 0);
	if (flags & (O_CREAT | O_TRUNC)) /* they change the file too */
		m.intent |= INTENT_WRITE;
	m.hook = HOOK_FILE;
	m.syscall = syscall;
	m.args[0] = flags;
	m.args[1] = mode;
	m.args[2] = dirfd;
	m.value = flags;
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.str_len = len;
	m.str = (char *)&s->key.data[1];
	apply(candidates, &m);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int sec_openat(struct trace_event_raw_sys_exit *ctx)
{
	return match_open(SYS_OPENAT, ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int sec_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return match_open(SYS_OPENAT2, ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_open")
int sec_open(struct trace_event_raw_sys_exit *ctx)
{
	return match_open(SYS_OPEN, ctx->ret);
}

/* A file handle names no path at all (name_to_handle_at + open_by_handle_at, with
 * CAP_DAC_READ_SEARCH): only the opened file tells what it is. */
SEC("tracepoint/syscalls/sys_exit_open_by_handle_at")
int sec_open_by_handle_at(struct trace_event_raw_sys_exit *ctx)
{
	return match_open(SYS_OPEN_BY_HANDLE_AT, ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_creat")
int sec_creat(struct trace_event_raw_sys_exit *ctx)
{
	return match_open(SYS_CREAT, ctx->ret);
}

/* --- mount: the target given ------------------------------------------------------------------ */

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

/* --- BPF program loads and attaches (the agent's own left out) --------------------------------- */

#define PERF_EVENT_IOC_SET_BPF 0x40042408 /* _IOW('$', 8, __u32) */
#define PERF_TYPE_TRACEPOINT 2

/* The program behind a bpf prog fd of the current process. */
static __always_inline void describe_prog(struct task_struct *task, long fd, struct sec_bpf *out)
{
	struct file *f = file_of_fd(task, fd);
	struct bpf_prog *prog;

	if (!f)
		return;
	prog = KERNEL_CAST(struct bpf_prog, f->private_data);
	out->prog_type = prog->type;
	out->attach_type = prog->expected_attach_type;
	__builtin_memcpy(out->tag, prog->tag, sizeof(out->tag));
	out->prog_id = prog->aux->id;
	__builtin_memcpy(out->name, prog->aux->name, sizeof(out->name));
}

static __always_inline int match_bpf(__u32 syscall, struct sec_bpf *b, __u64 cmd, __u64 target, char *str, __u32 len)
{
	struct hook_conf *c = conf_of(HOOK_BPF);
	struct match_args m = {};

	m.hook = HOOK_BPF;
	m.syscall = syscall;
	m.args[0] = cmd;
	m.args[1] = target;
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.bpf = b;
	m.str = str;
	m.str_len = len;
	if (c)
		apply(c->rules, &m);
	return 0;
}

/* At the exit of bpf(): loads (the new program, or what was asked when it failed) and the
 * attaches with their target (a raw tracepoint's name, a BTF function's, a target fd). */
SEC("tracepoint/syscalls/sys_exit_bpf")
int sec_bpf(struct trace_event_raw_sys_exit *ctx)
{
	struct hook_conf *c = conf_of(HOOK_BPF);
	struct task_struct *task;
	struct pt_regs *regs;
	struct sec_bpf b = {};
	struct scratch *s;
	void *uattr;
	__u64 cmd, target = 0;
	__u32 prog_fd = 0, len = 0;
	long ret = ctx->ret;

	if (!c || !c->rules || bpf_get_current_pid_tgid() >> 32 == self_pid)
		return 0;
	task = bpf_get_current_task_btf();
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	cmd = PT_REGS_PARM1_CORE_SYSCALL(regs);
	uattr = (void *)PT_REGS_PARM2_CORE_SYSCALL(regs);
	if (cmd != BPF_PROG_LOAD && cmd != BPF_PROG_ATTACH && cmd != BPF_RAW_TRACEPOINT_OPEN && cmd != BPF_LINK_CREATE)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	s->key.data[1] = 0;
	b.ret = ret;
	if (cmd == BPF_PROG_LOAD) {
		if (ret >= 0) {
			struct file *f = file_of_fd(task, ret);
			const char *func;

			describe_prog(task, ret, &b);
			func = f ? KERNEL_CAST(struct bpf_prog, f->private_data)->aux->attach_func_name : 0;
			if (func) {
				long n = bpf_probe_read_kernel_str(&s->key.data[1], SEC_PATH_LEN - 1, func);
				len = n > 0 ? n - 1 : 0;
			}
		} else { /* what was asked for */
			bpf_probe_read_user(&b.prog_type, 4, uattr);
			bpf_probe_read_user(b.name, sizeof(b.name), uattr + 48);
			bpf_probe_read_user(&b.attach_type, 4, uattr + 68);
		}
	} else if (cmd == BPF_RAW_TRACEPOINT_OPEN) {
		__u64 name = 0;
		long n;

		bpf_probe_read_user(&name, 8, uattr);
		bpf_probe_read_user(&prog_fd, 4, uattr + 8);
		n = name ? bpf_probe_read_user_str(&s->key.data[1], SEC_PATH_LEN - 1, (void *)name) : 0;
		len = n > 0 ? n - 1 : 0;
	} else { /* BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type; BPF_LINK_CREATE: prog_fd, target_fd, attach_type */
		__u32 fds[3] = {};

		bpf_probe_read_user(fds, sizeof(fds), uattr);
		prog_fd = cmd == BPF_PROG_ATTACH ? fds[1] : fds[0];
		target = cmd == BPF_PROG_ATTACH ? fds[0] : fds[1];
		b.attach_type = fds[2];
	}
	if (cmd != BPF_PROG_LOAD && ret >= 0) {
		__u32 attach_type = b.attach_type;

		describe_prog(task, prog_fd, &b);
		if (cmd != BPF_RAW_TRACEPOINT_OPEN)
			b.attach_type = attach_type; /* what it was attached as */
	}
	return match_bpf(SYS_BPF, &b, cmd, target, (char *)&s->key.data[1], len);
}

/* perf_event_open + ioctl(PERF_EVENT_IOC_SET_BPF): how tracepoint, kprobe, uprobe and perf
 * programs are attached without a BPF link (bpftrace does this). The target is the perf
 * event's type and config (a tracepoint's id, named in user space). */
SEC("tracepoint/syscalls/sys_exit_ioctl")
int sec_ioctl(struct trace_event_raw_sys_exit *ctx)
{
	struct hook_conf *c = conf_of(HOOK_BPF);
	struct task_struct *task;
	struct perf_event *event;
	struct pt_regs *regs;
	struct sec_bpf b = {};
	struct file *f;
	__u64 config = 0;

	if (!c || !c->rules)
		return 0;
	task = bpf_get_current_task_btf();
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if ((__u32)PT_REGS_PARM2_CORE_SYSCALL(regs) != PERF_EVENT_IOC_SET_BPF ||
	    bpf_get_current_pid_tgid() >> 32 == self_pid)
		return 0;
	b.ret = ctx->ret;
	if (ctx->ret == 0) {
		describe_prog(task, PT_REGS_PARM3_CORE_SYSCALL(regs), &b);
		f = file_of_fd(task, PT_REGS_PARM1_CORE_SYSCALL(regs));
		if (f) {
			event = KERNEL_CAST(struct perf_event, f->private_data);
			b.attach_type = event->attr.type;
			config = event->attr.config;
		}
	}
	return match_bpf(SYS_IOCTL, &b, PERF_EVENT_IOC_SET_BPF, config, 0, 0);
}

/* --- namespaces: setns and unshare (a container process leaving its own) ------------------------ */

/* setns(fd, nstype): the namespace joined is the fd's nsfs file, named as the kernel names it
 * ("mnt:[4026531841]"); a pidfd's is its pid file. */
SEC("tracepoint/syscalls/sys_enter_setns")
int sec_setns(struct trace_event_raw_sys_enter *ctx)
{
	struct hook_conf *c = conf_of(HOOK_NAMESPACE);
	struct match_args m = {};
	struct walk_ctx w = {};
	struct scratch *s;
	struct file *f;

	if (!c || !c->rules)
		return 0;
	s = get_scratch();
	if (!s)
		return 0;
	f = file_of_fd(bpf_get_current_task_btf(), ctx->args[0]);
	s->key.data[1] = 0;
	if (f) {
		walk_up(&w, s, f->f_path.dentry, f->f_path.mnt, HOOK_NAMESPACE, 0);
		m.str_len = path_from_walk(&w);
	}
	m.hook = HOOK_NAMESPACE;
	m.syscall = SYS_SETNS;
	m.args[0] = ctx->args[1]; /* nstype */
	m.args[1] = ctx->args[0]; /* fd */
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.str = (char *)&s->key.data[1];
	apply(c->rules, &m);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_unshare")
int sec_unshare(struct trace_event_raw_sys_enter *ctx)
{
	return match_values(HOOK_NAMESPACE, SYS_UNSHARE, ctx->args[0], 0, 0, 0);
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

/* --- exec: the file the kernel executed ------------------------------------------------------- */

#if defined(__TARGET_ARCH_x86)
#define EXECVEAT_NR 322
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#elif defined(__TARGET_ARCH_arm64)
#define EXECVEAT_NR 281
#define SYSCALL_NR(regs) ((regs)->syscallno)
#endif

/* Exec rules on the file the kernel executed (bprm->file: a symlink or a relative path is
 * resolved, a script's is its interpreter), and on the path given to exec (a script's own
 * path). The new image is loaded and not yet run: a kill here stops it before its first
 * instruction. Rules see the binary selectors of the image that called exec. */
static __always_inline __u32 match_exec(struct scratch *s, struct linux_binprm *bprm, struct hook_conf *c)
{
	struct match_args m = {};
	__u64 found = 0, candidates;
	__u32 len;
	long n;

	if (c->in_rules | c->notin_rules) {
		n = bpf_probe_read_kernel_str(&s->key.data[1], SEC_PATH_LEN - 1, bprm->filename);
		if (n > 0)
			found = path_matches(c, s, HOOK_EXEC, n - 1);
	}
	found |= file_matches(c, s, bprm->file, HOOK_EXEC, true, &len);
	candidates = candidates_of(c, found);
	if (!candidates)
		return len;
	m.hook = HOOK_EXEC;
	m.syscall = SYS_EXECVE;
#ifdef EXECVEAT_NR
	{
		struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

		if (SYSCALL_NR(regs) == EXECVEAT_NR)
			m.syscall = SYS_EXECVEAT;
	}
#endif
	m.value2 = ~0ULL;
	m.value3 = ~0ULL;
	m.str_len = len;
	m.str = (char *)&s->key.data[1];
	apply(candidates, &m);
	return len;
}

/* Per-process binary selectors, evaluated once per exec on the executed file's path. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(sec_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct scratch *s = get_scratch();
	struct hook_conf *c = conf_of(HOOK_EXEC);
	struct binary_masks *found;
	struct walk_ctx w = {};
	__u32 pid = p->tgid, len;

	if (!s || !c)
		return 0;
	if (c->rules) {
		len = match_exec(s, bprm, c);
	} else {
		walk_up(&w, s, bprm->file->f_path.dentry, bprm->file->f_path.mnt, HOOK_EXEC, 0);
		len = path_from_walk(&w);
	}
	__builtin_memset(&s->proc, 0, sizeof(s->proc));
	s->key.data[0] = 0; /* the binaries trie: hook byte 0, the path the walk left in the key */
	s->key.prefixlen = (2 + len) * 8;
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
