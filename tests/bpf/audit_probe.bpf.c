// SPDX-License-Identifier: GPL-2.0
/* A program for the security sensor's BPF load audit test: loaded by `bpftool prog load`,
 * never attached. Its name and type are what the audit event must report. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tracepoint/syscalls/sys_enter_getppid")
int audit_probe_23(void *ctx)
{
	return 0;
}
