/**
 * Guards for tests that need the kernel (bpf syscall, namespaces, XDP/tc) and root.
 * Outside CI a machine without them skips those tests, saying why; under CI=true they run
 * anyway and fail, so a CI machine that lost its privileges can never look green.
 */
import { test, type TestContext } from 'node:test';
import { existsSync } from 'node:fs';

export const inCI = process.env.CI === 'true' || process.env.CI === '1';

export function kernelUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)';
  if (!existsSync('/proc/sys/net/core/bpf_jit_enable') && !existsSync('/sys/kernel/btf/vmlinux')) return 'kernel has no BPF support';
  return undefined;
}

/** Like `test()`, for tests that need root and the kernel's BPF. */
export function kernelTest(name: string, fn: (t: TestContext) => Promise<void> | void, opts: { timeout?: number } = {}): void {
  const why = kernelUnavailable();
  if (why && !inCI) {
    test(name, { skip: why }, () => {});
    return;
  }
  test(name, { timeout: opts.timeout ?? 120_000 }, async (t) => {
    if (why) throw new Error(`kernel test cannot run: ${why} (CI=true, so this fails instead of skipping)`);
    await fn(t);
  });
}

let counter = 0;
/** A namespace or interface name unique to this process, at most 15 characters. */
export function uniqueName(prefix: string): string {
  counter += 1;
  return `${prefix.slice(0, 4)}${process.pid.toString(36)}${counter.toString(36)}`.slice(0, 15);
}
