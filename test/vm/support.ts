/**
 * Shared pieces of the VM tests: a BigInt model of eBPF arithmetic as the kernel defines it
 * (the oracle for both engines), and a runner that runs a program on both engines and
 * insists they agree.
 */
import assert from 'node:assert/strict';
import { Assembler } from '../../src/bpf/asm.js';
import type { Insn } from '../../src/bpf/insn.js';
import { Vm, type VmOptions } from '../../src/vm/vm.js';
import { createMap, type VmMap } from '../../src/vm/maps.js';
import type { RunInput } from '../../src/vm/machine.js';

export const M64 = (1n << 64n) - 1n;
export const M32 = (1n << 32n) - 1n;
export const u64 = (v: bigint): bigint => v & M64;
export const s64 = (v: bigint): bigint => BigInt.asIntN(64, v);
export const s32 = (v: bigint): bigint => BigInt.asIntN(32, v);

export type AluName = 'add' | 'sub' | 'mul' | 'div' | 'sdiv' | 'or' | 'and' | 'lsh' | 'rsh' | 'mod' | 'smod' | 'xor' | 'arsh';
export const ALU_NAMES: AluName[] = ['add', 'sub', 'mul', 'div', 'sdiv', 'or', 'and', 'lsh', 'rsh', 'mod', 'smod', 'xor', 'arsh'];

/** The kernel's result of `dst op= src` (unsigned 64-bit in, unsigned 64-bit out). */
export function refAlu(op: AluName, is64: boolean, dst: bigint, src: bigint): bigint {
  if (is64) {
    switch (op) {
      case 'add': return u64(dst + src);
      case 'sub': return u64(dst - src);
      case 'mul': return u64(dst * src);
      case 'div': return src === 0n ? 0n : dst / src;
      case 'sdiv': return src === 0n ? 0n : u64(s64(dst) / s64(src));
      case 'mod': return src === 0n ? dst : dst % src;
      case 'smod': return src === 0n ? dst : u64(s64(dst) % s64(src));
      case 'or': return dst | src;
      case 'and': return dst & src;
      case 'xor': return dst ^ src;
      case 'lsh': return u64(dst << (src & 63n));
      case 'rsh': return dst >> (src & 63n);
      case 'arsh': return u64(s64(dst) >> (src & 63n));
    }
  }
  const d = dst & M32, s = src & M32;
  switch (op) {
    case 'add': return (d + s) & M32;
    case 'sub': return (d - s) & M32;
    case 'mul': return (d * s) & M32;
    case 'div': return s === 0n ? 0n : d / s;
    case 'sdiv': return s === 0n ? 0n : BigInt.asUintN(32, s32(d) / s32(s));
    case 'mod': return s === 0n ? d : d % s;
    case 'smod': return s === 0n ? d : BigInt.asUintN(32, s32(d) % s32(s));
    case 'or': return d | s;
    case 'and': return d & s;
    case 'xor': return d ^ s;
    case 'lsh': return (d << (s & 31n)) & M32;
    case 'rsh': return d >> (s & 31n);
    case 'arsh': return BigInt.asUintN(32, s32(d) >> (s & 31n));
  }
}

/** A 14-byte-or-longer test packet. */
export function packet(len = 64, fill = (i: number) => i & 0xff): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => fill(i));
}

export interface BothResult {
  retval: number;
  packet: Uint8Array;
  /** The 64-bit words of the `out` map's value, when the program used it. */
  out: bigint[];
}

/** An array map `out` with one value of `words` u64 words, for programs to report 64-bit results. */
export function outMap(words = 8): VmMap {
  return createMap({ type: 'array', keySize: 4, valueSize: 8 * words, maxEntries: 1, name: 'out' });
}

function readOut(map: VmMap | undefined): bigint[] {
  if (!map) return [];
  const v = map.lookup(0)!;
  const view = new DataView(v.buffer, v.byteOffset, v.byteLength);
  return Array.from({ length: v.length / 8 }, (_, i) => view.getBigUint64(i * 8, true));
}

/**
 * Runs the program once per engine, each with its own fresh maps from `makeMaps`, and asserts
 * both engines give the same retval, packet and `out` words (or throw the same error).
 */
export function runBoth(
  insns: readonly Insn[],
  opts: Omit<VmOptions, 'engine' | 'maps'> & { makeMaps?: () => Record<string, VmMap> },
  pkt: Uint8Array = packet(),
  input?: RunInput,
): BothResult {
  const results: (BothResult | Error)[] = [];
  for (const engine of ['interpreter', 'jit'] as const) {
    const maps = opts.makeMaps ? opts.makeMaps() : {};
    try {
      const vm = new Vm(insns, { ...opts, maps, engine });
      const r = vm.run(pkt, input);
      results.push({ retval: r.retval, packet: r.copyPacket(), out: readOut(maps.out) });
    } catch (err) {
      results.push(err as Error);
    }
  }
  const [a, b] = results as [BothResult | Error, BothResult | Error];
  if (a instanceof Error || b instanceof Error) {
    assert.ok(a instanceof Error && b instanceof Error, `one engine threw, the other did not: ${a instanceof Error ? a.message : b instanceof Error ? b.message : ''}`);
    assert.equal(b.message, a.message, 'both engines fail with the same message');
    throw a;
  }
  assert.deepEqual(b, a, 'interpreter and JIT agree');
  return a;
}

/** Assembles with `mapRefs` and runs on both engines. */
export function runAsm(
  build: (a: Assembler) => void,
  opts: Omit<VmOptions, 'engine' | 'maps' | 'mapRefs'> & { makeMaps?: () => Record<string, VmMap> } = { programType: 'xdp' },
  pkt?: Uint8Array,
  input?: RunInput,
): BothResult {
  const a = new Assembler();
  build(a);
  const { insns, mapRefs } = a.assemble();
  return runBoth(insns, { ...opts, mapRefs }, pkt, input);
}

/** The error both engines throw (asserting they throw the same one). */
export function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  assert.fail('expected an error');
}

/** Edge-case 64-bit values for arithmetic tests. */
export const EDGE_VALUES: bigint[] = [
  0n, 1n, 2n, 3n, 7n, 31n, 32n, 33n, 63n, 64n, 65n, 0x7fn, 0x80n, 0xffn, 0x7fffn, 0x8000n, 0xffffn,
  0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n, 0x100000001n, 0x7fffffffffffffffn,
  0x8000000000000000n, 0xffffffffffffffffn, 0xfffffffffffffffen, 0xffffffff00000000n, 0x00000000deadbeefn,
  0x123456789abcdef0n, 0xfedcba9876543210n, 0xffffffff80000000n, 0x0000000180000000n,
];
