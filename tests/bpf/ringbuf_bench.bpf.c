// SPDX-License-Identifier: GPL-2.0
/* A synthetic ring buffer producer for the reader's benchmark and tests.
 *
 * A BPF_PROG_TYPE_SYSCALL program run with BPF_PROG_RUN writes `count` records in one call
 * (bpf_loop), so user space can offer millions of records per second at a chosen rate.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* The synthetic record: 40 bytes, as in the ring buffer reader's bar. */
struct bench_event {
	__u64 seq;
	__u64 ktime_ns;
	__u32 cpu;
	__u32 batch;
	__u64 a;
	__u64 b;
};

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} bench_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_drops SEC(".maps");

/* Keeps struct bench_event in the object's BTF for the layout check. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_event);
} bench_layout SEC(".maps");

struct produce_args {
	__u64 first_seq;
	__u32 count;
	__u32 batch;
};

struct loop_ctx {
	__u64 first_seq;
	__u32 batch;
};

static long produce_one(__u64 i, void *data)
{
	struct loop_ctx *lc = data;
	struct bench_event *e;

	e = bpf_ringbuf_reserve(&bench_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *drops = bpf_map_lookup_elem(&bench_drops, &zero);

		if (drops)
			*drops += 1;
		return 0;
	}
	e->seq = lc->first_seq + i;
	e->ktime_ns = bpf_ktime_get_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->batch = lc->batch;
	e->a = i * 3;
	e->b = i ^ 0x5a5a;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("syscall")
int produce(struct produce_args *args)
{
	struct loop_ctx lc = { .first_seq = args->first_seq, .batch = args->batch };

	bpf_loop(args->count, produce_one, &lc, 0);
	return 0;
}

/* Records of varying size (16..56 bytes of payload), every 7th one discarded: exercises
 * the reader's variable-length walk and the DISCARD bit. Payload: u64 seq, then filler. */
static long produce_mixed_one(__u64 i, void *data)
{
	struct loop_ctx *lc = data;
	__u64 seq = lc->first_seq + i;
	__u32 words = 2 + seq % 6;
	__u64 *rec;

	switch (words) { /* the size passed to reserve must be a constant */
	case 2: rec = bpf_ringbuf_reserve(&bench_events, 16, 0); break;
	case 3: rec = bpf_ringbuf_reserve(&bench_events, 24, 0); break;
	case 4: rec = bpf_ringbuf_reserve(&bench_events, 32, 0); break;
	case 5: rec = bpf_ringbuf_reserve(&bench_events, 40, 0); break;
	case 6: rec = bpf_ringbuf_reserve(&bench_events, 48, 0); break;
	default: rec = bpf_ringbuf_reserve(&bench_events, 56, 0); break;
	}
	if (!rec) {
		__u32 zero = 0;
		__u64 *drops = bpf_map_lookup_elem(&bench_drops, &zero);

		if (drops)
			*drops += 1;
		return 0;
	}
	rec[0] = seq;
	rec[1] = words;
	if (seq % 7 == 0)
		bpf_ringbuf_discard(rec, 0);
	else
		bpf_ringbuf_submit(rec, 0);
	return 0;
}

SEC("syscall")
int produce_mixed(struct produce_args *args)
{
	struct loop_ctx lc = { .first_seq = args->first_seq, .batch = args->batch };

	bpf_loop(args->count, produce_mixed_one, &lc, 0);
	return 0;
}
