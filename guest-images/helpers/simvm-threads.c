// SPDX-License-Identifier: Apache-2.0
/*
 * simvm-threads N ROUNDS: N threads (letters a, b, ...) of one process race
 * to append their letter to a shared buffer, ROUNDS times each, with a
 * system call (getppid) between appends; then "order LETTERS" is printed.
 *
 * The order is where the threads were preempted. On one virtual CPU, a
 * thread is preempted only by a timer tick or, with chaos scheduling
 * (docs/determinism.md), at a system call: tests compare the orders of
 * seeds (tests/faults.rs).
 */
#include "tiny.h"

#define SYS_getppid 110
#define SYS_clone 56
#define SYS_exit 60
#define SYS_sched_yield 24

#define CLONE_VM 0x00000100
#define CLONE_FS 0x00000200
#define CLONE_FILES 0x00000400
#define CLONE_SIGHAND 0x00000800
#define CLONE_THREAD 0x00010000
#define CLONE_SYSVSEM 0x00040000

#define MAX_THREADS 8
#define MAX_ROUNDS 64
#define STACK_SIZE 16384

static char order[MAX_THREADS * MAX_ROUNDS + 1];
static u64 appended;
static u64 finished;
static u64 rounds;
static unsigned char stacks[MAX_THREADS][STACK_SIZE] __attribute__((aligned(16)));

static void racer(s64 id)
{
	for (u64 i = 0; i < rounds; i++) {
		u64 at = __atomic_fetch_add(&appended, 1, __ATOMIC_SEQ_CST);

		order[at] = (char)('a' + id);
		syscall3(SYS_getppid, 0, 0, 0);
	}
	__atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
}

/*
 * A thread on its own stack, running racer(id) and then exiting alone
 * (SYS_exit, not exit_group). The child starts on the new stack with
 * nothing of the parent's frame, so it is written in assembly.
 */
static s64 spawn(s64 id)
{
	u64 *sp = (u64 *)(stacks[id] + STACK_SIZE);
	s64 flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
		    CLONE_THREAD | CLONE_SYSVSEM;
	register s64 r10 __asm__("r10") = 0;
	register s64 r8 __asm__("r8") = 0;
	s64 ret;

	*--sp = (u64)id;
	*--sp = (u64)racer;
	__asm__ volatile(
		"syscall\n"
		"test %%rax, %%rax\n"
		"jnz 1f\n"
		"pop %%rax\n"
		"pop %%rdi\n"
		"call *%%rax\n"
		"mov %[exit], %%eax\n"
		"xor %%edi, %%edi\n"
		"syscall\n"
		"1:\n"
		: "=a"(ret)
		: "a"(SYS_clone), "D"(flags), "S"(sp), "d"(0), "r"(r10), "r"(r8),
		  [exit] "i"(SYS_exit)
		: "rcx", "r11", "memory");
	return ret;
}

int main(int argc, char **argv)
{
	u64 threads = argc == 3 ? parse_u64(argv[1], 4) : 0;

	rounds = argc == 3 ? parse_u64(argv[2], 10) : 0;
	if (threads < 1 || threads > MAX_THREADS || rounds < 1 || rounds > MAX_ROUNDS) {
		put("usage: simvm-threads N ROUNDS (N up to 8, ROUNDS up to 64)\n");
		return 2;
	}
	for (u64 t = 0; t < threads; t++) {
		if (spawn((s64)t) < 0) {
			put("simvm-threads: clone failed\n");
			return 1;
		}
	}
	while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < threads)
		syscall3(SYS_sched_yield, 0, 0, 0);
	order[appended] = 0;
	put("order ");
	put(order);
	put("\n");
	return 0;
}
