// SPDX-License-Identifier: GPL-2.0
/* A synthetic ring buffer producer for the reader's benchmark and tests.
 *
 * A BPF_PROG_TYPE_SYSCALL program run with BPF_PROG_RUN writes `count` records in one call
 * (bpf_loop), so user space can offer millions of records per second at a chosen rate.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "events.h"

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
