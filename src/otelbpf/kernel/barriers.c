// SPDX-License-Identifier: Apache-2.0
/* Memory ordering for the ring buffer reader (kernel/ringbuf.py), which Python cannot express:
 * the kernel publishes a record by a release store of its header and of the producer
 * position; the reader must load them with acquire semantics before it reads the record, and
 * give the space back with a release store of the consumer position after it copied it out.
 * x86-64 orders plain loads and stores so already; arm64 does not. Built by the Makefile. */
#include <stdint.h>

uint64_t otelbpf_load_acquire_u64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

void otelbpf_store_release_u64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* After the headers were read with plain loads: no later load moves before them. */
void otelbpf_fence_acquire(void)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
}
