/**
 * What this kernel can do, each feature found by a tiny syscall that uses it, never by the
 * version string: load `r0 = verdict; exit` as XDP and sched_cls, run it with
 * BPF_PROG_TEST_RUN, load a one-type BTF blob, create a ring buffer and an LRU hash, and
 * create an XDP link and a tcx link on the loopback device of a brand-new network namespace
 * (so nothing real is touched, and a refusal cannot be mistaken for a busy hook). Two answers
 * describe the instruction set and a helper rather than a syscall: whether the verifier takes
 * the cpu v4 instructions (a program with one signed division), and whether bpf_csum_diff
 * returns its sum folded to 16 bits (one call through BPF_PROG_TEST_RUN).
 */
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { release } from 'node:os';
import { Assembler, imm } from '../bpf/asm.js';
import { R0, R1, R2, R3, R4, R5, R10 } from '../bpf/opcodes.js';
import { NetmangleError } from '../errors.js';
import { libc, syscall } from './ffi.js';
import { closeFd } from './fd.js';
import { createTcxLink, createXdpLink } from './link.js';
import { createMap } from './map.js';
import { loadProgram, testRun, type Program } from './program.js';
import { Attr, Cmd, EINVAL, ENOENT, ENOSYS, EPERM, Off, bpfTry } from './sys.js';

export interface ProbeFeatures {
  bpf_syscall: boolean;
  jit: boolean;
  btf: boolean;
  prog_xdp: boolean;
  prog_sched_cls: boolean;
  xdp_link: boolean;
  tcx: boolean;
  test_run: boolean;
  ringbuf: boolean;
  lru_hash: boolean;
  /** The cpu v4 instructions (sdiv/smod, movsx, sign-extending loads, bswap, gotol: Linux 6.6). */
  isa_v4: boolean;
  /** bpf_csum_diff returns its sum folded to 16 bits (newer kernels), not the 32-bit partial sum. */
  csum_diff_folded: boolean;
  /** bpf_csum_diff takes sizes that are not multiples of 4 (newer kernels; older ones: -EINVAL). */
  csum_diff_any_size: boolean;
}

export interface ProbeResult {
  /** os.release(), for the record only: nothing is decided from it. */
  kernel: string;
  features: ProbeFeatures;
  /** How netmangle attaches at each hook on this kernel. */
  attach: { xdp: 'link' | 'netlink'; ingress: 'tcx' | 'netlink'; egress: 'tcx' | 'netlink' };
}

const CLONE_NEWNET = 0x40000000;
const SYS_UNSHARE = process.arch === 'arm64' ? 97 : 272;

/** Thrown when probing is impossible because the process lacks privileges. */
export class NotPrivilegedError extends NetmangleError {}

/**
 * Runs `fn` with the calling thread in a new, empty network namespace, then switches back.
 * Returns undefined when no namespace could be made. Throws if switching back fails, since
 * every later network call would then happen in the wrong namespace.
 */
function inFreshNetns<T>(fn: () => T): T | undefined {
  const home = openSync('/proc/thread-self/ns/net', 'r');
  try {
    if (syscall(SYS_UNSHARE, CLONE_NEWNET) !== 0) return undefined;
    try {
      return fn();
    } finally {
      if (libc.setns(home, CLONE_NEWNET) !== 0) {
        throw new Error('feature probe could not switch back to its network namespace (please report this)');
      }
    }
  } finally {
    closeSync(home);
  }
}

function returnOnly(verdict: number) {
  return new Assembler().movImm(R0, verdict).exit().assemble().insns;
}

/** `r0 = 7; r1 = -1; r0 s/= r1; exit`: a signed division, which only a cpu v4 verifier takes. */
function signedDivision() {
  return new Assembler().movImm(R0, 7).movImm(R1, -1).alu64('sdiv', R0, R1).exit().assemble().insns;
}

/** The word 0x12345678 summed by bpf_csum_diff (to_size 4, seed 0): folded, 0x1234 + 0x5678. */
const CSUM_WORD = 0x12345678;
const CSUM_WORD_FOLDED = 0x68ac;
function csumDiffOf(toSize: number) {
  return new Assembler()
    .st(4, R10, -4, CSUM_WORD)
    .movImm(R1, 0).movImm(R2, 0).mov64(R3, R10).alu64('add', R3, imm(-4)).movImm(R4, toSize).movImm(R5, 0)
    .call(28) // bpf_csum_diff
    .exit().assemble().insns;
}

function attempt(fn: () => boolean): boolean {
  try {
    return fn();
  } catch {
    return false;
  }
}

/** A valid BTF blob with a single type, `int` (what libbpf's own basic BTF probe loads). */
function tinyBtf(): Buffer {
  const strings = Buffer.from('\0int\0', 'latin1');
  const types = Buffer.alloc(16);
  types.writeUInt32LE(1, 0); // name_off → "int"
  types.writeUInt32LE(1 << 24, 4); // info: kind BTF_KIND_INT, no members
  types.writeUInt32LE(4, 8); // size
  types.writeUInt32LE((1 << 24) | 32, 12); // encoding SIGNED, offset 0, 32 bits
  const header = Buffer.alloc(24);
  header.writeUInt16LE(0xeb9f, 0); // magic
  header.writeUInt8(1, 2); // version
  header.writeUInt8(0, 3); // flags
  header.writeUInt32LE(24, 4); // hdr_len
  header.writeUInt32LE(0, 8); // type_off
  header.writeUInt32LE(types.length, 12); // type_len
  header.writeUInt32LE(types.length, 16); // str_off
  header.writeUInt32LE(strings.length, 20); // str_len
  return Buffer.concat([header, types, strings]);
}

function probeBtf(): boolean {
  const blob = tinyBtf();
  const attr = new Attr().ptr(Off.btfLoad.btf, blob).u32(Off.btfLoad.size, blob.length);
  const fd = bpfTry(Cmd.BTF_LOAD, attr);
  if (fd < 0) return false;
  closeFd(fd);
  return true;
}

function jitFromSysctl(): boolean {
  try {
    return readFileSync('/proc/sys/net/core/bpf_jit_enable', 'utf8').trim() !== '0';
  } catch {
    return false;
  }
}

const NO_FEATURES: Readonly<ProbeFeatures> = {
  bpf_syscall: false, jit: false, btf: false, prog_xdp: false, prog_sched_cls: false,
  xdp_link: false, tcx: false, test_run: false, ringbuf: false, lru_hash: false,
  isa_v4: false, csum_diff_folded: false, csum_diff_any_size: false,
};

/**
 * Probes every feature netmangle uses. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN);
 * without it throws NotPrivilegedError. Takes a few milliseconds.
 */
export function probeFeatures(): ProbeResult {
  const notRoot = new NotPrivilegedError('probing the kernel needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo');
  if (typeof process.geteuid === 'function' && process.geteuid() !== 0) throw notRoot;

  const features: ProbeFeatures = { ...NO_FEATURES };

  const first = bpfTry(Cmd.PROG_GET_NEXT_ID, new Attr().u32(Off.getId.startId, 0));
  if (first === -EPERM) throw notRoot;
  features.bpf_syscall = first >= 0 || first === -ENOENT;
  if (first === -ENOSYS || !features.bpf_syscall) return finish(features);

  let xdp: Program | undefined;
  let cls: Program | undefined;
  try {
    try {
      xdp = loadProgram({ type: 'xdp', insns: returnOnly(2), name: 'nm_probe_xdp' });
      features.prog_xdp = true;
    } catch { /* stays false */ }
    try {
      cls = loadProgram({ type: 'sched_cls', insns: returnOnly(0), name: 'nm_probe_tc' });
      features.prog_sched_cls = true;
    } catch { /* stays false */ }

    const anyProg = xdp ?? cls;
    features.jit = anyProg ? attempt(() => anyProg.info().jitedSize > 0) || jitFromSysctl() : jitFromSysctl();
    if (xdp) {
      const prog = xdp;
      features.test_run = attempt(() => testRun(prog, { data: new Uint8Array(64) }).retval === 2);
    }
    features.isa_v4 = attempt(() => {
      loadProgram({ type: 'xdp', insns: signedDivision(), name: 'nm_probe_v4' }).close();
      return true;
    });
    if (features.test_run) {
      const csumDiff = (toSize: number): number => {
        const prog = loadProgram({ type: 'xdp', insns: csumDiffOf(toSize), name: 'nm_probe_csum' });
        try {
          return testRun(prog, { data: new Uint8Array(64) }).retval;
        } finally {
          prog.close();
        }
      };
      // Unfolded, the kernel returns a 32-bit sum above 0xffff; folded, exactly this.
      features.csum_diff_folded = attempt(() => csumDiff(4) >>> 0 === CSUM_WORD_FOLDED);
      // Two bytes: an older kernel answers -EINVAL (sizes must be multiples of 4).
      features.csum_diff_any_size = attempt(() => csumDiff(2) !== -EINVAL);
    }
    features.btf = attempt(probeBtf);
    features.ringbuf = attempt(() => {
      createMap({ type: 'ringbuf', keySize: 0, valueSize: 0, maxEntries: 64 * 1024, name: 'nm_probe_rb' }).close();
      return true;
    });
    features.lru_hash = attempt(() => {
      createMap({ type: 'lru_hash', keySize: 4, valueSize: 4, maxEntries: 64, name: 'nm_probe_lru' }).close();
      return true;
    });

    const loopback = 1; // always the first device of a new namespace
    // A failure to return from the namespace must not be swallowed: it propagates.
    inFreshNetns(() => {
      if (xdp) {
        const prog = xdp;
        features.xdp_link = attempt(() => {
          createXdpLink(prog, loopback, { mode: 'skb' }).close();
          return true;
        });
      }
      if (cls) {
        const prog = cls;
        features.tcx = attempt(() => {
          createTcxLink(prog, loopback, 'ingress').close();
          return true;
        });
      }
    });
  } finally {
    xdp?.close();
    cls?.close();
  }
  return finish(features);
}

function finish(features: ProbeFeatures): ProbeResult {
  return {
    kernel: release(),
    features,
    attach: {
      xdp: features.xdp_link ? 'link' : 'netlink',
      ingress: features.tcx ? 'tcx' : 'netlink',
      egress: features.tcx ? 'tcx' : 'netlink',
    },
  };
}

const PROBE_CACHE = '/run/netmangle/probe.json';

/**
 * probeFeatures(), remembered for this boot of this kernel in /run (a tmpfs, gone at reboot):
 * the probe attaches test programs in a fresh namespace and costs tens of milliseconds, which
 * every `netmangle run` would otherwise pay before attaching.
 */
export function probeFeaturesCached(): ProbeResult {
  let boot = '';
  try {
    boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    const cached = JSON.parse(readFileSync(PROBE_CACHE, 'utf8')) as { boot: string; result: ProbeResult };
    // A cache written before a feature was added lacks its key: probe again.
    const complete = Object.keys(NO_FEATURES).every((k) => k in (cached.result.features ?? {}));
    if (cached.boot === boot && cached.result.kernel === release() && complete) return cached.result;
  } catch {
    // No cache yet, or unreadable: probe.
  }
  const result = probeFeatures();
  if (boot) {
    try {
      mkdirSync(dirname(PROBE_CACHE), { recursive: true });
      writeFileSync(PROBE_CACHE, JSON.stringify({ boot, result }));
    } catch {
      // A cache we cannot write only costs time.
    }
  }
  return result;
}
