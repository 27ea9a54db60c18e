// SPDX-License-Identifier: GPL-2.0
/* The HTTP sensor's two hooks (tp_btf sys_enter and sys_exit) with programs that do nothing:
 * bench/bench_http.py measures what the hooks alone cost a workload, the floor under which no
 * capture program on them can go.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sys_enter")
int BPF_PROG(floor_sys_enter, struct pt_regs *regs, long id)
{
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(floor_sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
