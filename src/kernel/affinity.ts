/**
 * The calling thread's CPU affinity. BPF_PROG_TEST_RUN runs XDP and tc programs on the
 * caller's CPU (BPF_F_TEST_RUN_ON_CPU is for raw tracepoints only), so a caller that needs
 * every run on one CPU, such as one reading per-CPU PRNG state, pins its thread first.
 */
import { errno, koffi, SyscallError } from './ffi.js';

const MASK_BYTES = 128; // 1024 CPUs, glibc's cpu_set_t

let calls: { get: (pid: number, size: number, mask: Buffer) => number; set: (pid: number, size: number, mask: Buffer) => number } | undefined;

function affinityCalls(): NonNullable<typeof calls> {
  if (!calls) {
    const lib = koffi().load('libc.so.6');
    calls = {
      get: lib.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)') as unknown as NonNullable<typeof calls>['get'],
      set: lib.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)') as unknown as NonNullable<typeof calls>['set'],
    };
  }
  return calls;
}

/** The CPUs the calling thread may run on, ascending. */
export function allowedCpus(): number[] {
  const mask = Buffer.alloc(MASK_BYTES);
  if (affinityCalls().get(0, mask.length, mask) < 0) throw new SyscallError('sched_getaffinity', errno());
  const out: number[] = [];
  for (let i = 0; i < MASK_BYTES * 8; i++) if (mask[i >> 3]! & (1 << (i & 7))) out.push(i);
  return out;
}

/**
 * Pins the calling thread to `cpu` (default: the first it may use) and returns the CPU and a
 * function that restores the previous affinity.
 */
export function pinThread(cpu?: number): { cpu: number; restore: () => void } {
  const c = affinityCalls();
  const saved = Buffer.alloc(MASK_BYTES);
  if (c.get(0, saved.length, saved) < 0) throw new SyscallError('sched_getaffinity', errno());
  let target = cpu;
  if (target === undefined) {
    target = 0;
    while (target < MASK_BYTES * 8 && !(saved[target >> 3]! & (1 << (target & 7)))) target++;
  }
  const mask = Buffer.alloc(MASK_BYTES);
  mask[target >> 3] = 1 << (target & 7);
  if (c.set(0, mask.length, mask) !== 0) throw new SyscallError(`sched_setaffinity to CPU ${target}`, errno());
  return { cpu: target, restore: () => { c.set(0, saved.length, saved); } };
}
