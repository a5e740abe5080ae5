/**
 * Guards for tests that need the kernel (bpf syscall, namespaces, XDP/tc) and root.
 * Outside CI a machine without them skips those tests, saying why; under CI=true they run
 * anyway and fail, so a CI machine that lost its privileges can never look green.
 *
 * A test that needs a kernel feature only some kernels have (tcx…) says so with `needs`; the
 * feature probe (src/kernel/probe.ts) decides, never the kernel version, and a test is skipped
 * only when the probe ran and found the feature absent, naming it (also under CI=true: that is
 * a fact about the kernel, not a lost privilege). Tests that work either way ask `kernelProbe()`
 * what to expect (`attach.ingress` is 'tcx' or 'netlink').
 */
import { test, type TestContext } from 'node:test';
import { existsSync } from 'node:fs';
import { probeFeatures, type ProbeFeatures, type ProbeResult } from '../../src/kernel/probe.js';

export const inCI = process.env.CI === 'true' || process.env.CI === '1';

/**
 * How much slower than the machine the tests were written on this one is: NETMANGLE_SLOW=8 in
 * the kernel matrix's emulated guest. It scales timeouts and waits for something to happen,
 * never an assertion about what happened.
 */
export const slowFactor: number = (() => {
  const n = Number(process.env.NETMANGLE_SLOW ?? '1');
  return Number.isFinite(n) && n >= 1 ? n : 1;
})();

/** `ms` scaled by slowFactor: for timeouts and deadlines of waits. */
export function scaled(ms: number): number {
  return Math.round(ms * slowFactor);
}

export function kernelUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)';
  if (!existsSync('/proc/sys/net/core/bpf_jit_enable') && !existsSync('/sys/kernel/btf/vmlinux')) return 'kernel has no BPF support';
  return undefined;
}

let probed: ProbeResult | undefined;
/** The feature probe's answer for this kernel (probed once per test process). Needs root. */
export function kernelProbe(): ProbeResult {
  probed ??= probeFeatures();
  return probed;
}

export type KernelFeature = keyof ProbeFeatures;

export interface KernelTestOptions {
  timeout?: number;
  /** Features the test needs; it is skipped, naming them, where the probe finds any absent. */
  needs?: KernelFeature | KernelFeature[];
}

type KernelTestFn = (t: TestContext) => Promise<void> | void;

/** Why a test needing `needs` cannot run on this kernel, or undefined when it can. */
function missingFeatures(needs: KernelFeature[]): string | undefined {
  if (needs.length === 0 || kernelUnavailable()) return undefined;
  const result = kernelProbe();
  const absent = needs.filter((f) => !result.features[f]);
  return absent.length ? `needs ${absent.join(', ')}, which the probe finds absent on kernel ${result.kernel}` : undefined;
}

/**
 * Like `test()`, for tests that need root and the kernel's BPF:
 * `kernelTest(name, fn)`, `kernelTest(name, fn, opts)` or `kernelTest(name, opts, fn)`.
 * The timeout (default 120 s) is scaled by slowFactor.
 */
export function kernelTest(name: string, fn: KernelTestFn, opts?: KernelTestOptions): void;
export function kernelTest(name: string, opts: KernelTestOptions, fn: KernelTestFn): void;
export function kernelTest(name: string, a: KernelTestFn | KernelTestOptions, b?: KernelTestFn | KernelTestOptions): void {
  const fn = (typeof a === 'function' ? a : b) as KernelTestFn;
  const opts = (typeof a === 'function' ? b : a) as KernelTestOptions | undefined ?? {};
  const why = kernelUnavailable();
  if (why && !inCI) {
    test(name, { skip: why }, () => {});
    return;
  }
  const absent = missingFeatures(opts.needs === undefined ? [] : [opts.needs].flat());
  if (absent) {
    test(name, { skip: absent }, () => {});
    return;
  }
  test(name, { timeout: scaled(opts.timeout ?? 120_000) }, async (t) => {
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
