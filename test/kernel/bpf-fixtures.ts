/**
 * Shared pieces of the bpf-*.test.ts files: small hand-assembled programs and a two-namespace
 * veth lab (198.18.0.1 in one namespace, 198.18.0.2 in the other) that cleans up after itself.
 */
import { execFileSync } from 'node:child_process';
import { Assembler, imm, R0, R1, R2, R10, type Assembled } from '../../src/bpf/index.js';
import { uniqueName } from '../helpers/kernel.js';

export const BPF_FUNC_map_lookup_elem = 1;
export const XDP_PASS = 2;
export const TC_ACT_OK = 0;

/**
 * Adds 1 to the u64 at key 0 of array map `counts` and returns `verdict`. With `perCpu` the
 * map is a percpu_array and the add is a plain load/add/store (each CPU owns its slot).
 */
export function countingProgram(verdict: number, perCpu = false): Assembled {
  const a = new Assembler()
    .st(4, R10, -4, 0) // key = 0
    .mov64(R2, R10)
    .alu64('add', R2, imm(-4))
    .ldMap(R1, 'counts')
    .call(BPF_FUNC_map_lookup_elem)
    .jmp('jeq', R0, imm(0), 'out')
    .movImm(R1, 1);
  if (perCpu) a.ldx(8, R2, R0, 0).alu64('add', R2, R1).stx(8, R0, 0, R2);
  else a.atomicAdd(8, R0, 0, R1);
  return a.label('out').movImm(R0, verdict).exit().assemble();
}

export function u32Key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export function u64Value(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

export function ip(args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The interface index of `dev` inside namespace `ns`. */
export function ifindexIn(ns: string, dev: string): number {
  const [link] = JSON.parse(ip(['-n', ns, '-j', 'link', 'show', 'dev', dev])) as Array<{ ifindex: number }>;
  if (!link) throw new Error(`no ${dev} in ${ns}`);
  return link.ifindex;
}

/** True when `ip link` shows an XDP program on `dev` in `ns`. */
export function hasXdp(ns: string, dev: string): boolean {
  const [link] = JSON.parse(ip(['-n', ns, '-j', 'link', 'show', 'dev', dev])) as Array<Record<string, unknown>>;
  return link !== undefined && 'xdp' in link;
}

export interface VethLab {
  /** Namespace with `devA` = 198.18.0.1/24. */
  nsA: string;
  /** Namespace with `devB` = 198.18.0.2/24. */
  nsB: string;
  devA: string;
  devB: string;
  ifindexA: number;
  ifindexB: number;
  /** Sends `count` pings from A to B; true when all were answered. */
  ping(count: number): boolean;
  destroy(): void;
}

/** Two namespaces joined by a veth pair. Call destroy() in a finally block. */
export function createVethLab(): VethLab {
  const nsA = uniqueName('nmba');
  const nsB = uniqueName('nmbb');
  const devA = 'veth-a';
  const devB = 'veth-b';
  const destroy = (): void => {
    for (const ns of [nsA, nsB]) {
      try {
        ip(['netns', 'del', ns]);
      } catch { /* already gone or never made */ }
    }
  };
  try {
    ip(['netns', 'add', nsA]);
    ip(['netns', 'add', nsB]);
    ip(['link', 'add', devA, 'netns', nsA, 'type', 'veth', 'peer', 'name', devB, 'netns', nsB]);
    ip(['-n', nsA, 'addr', 'add', '198.18.0.1/24', 'dev', devA]);
    ip(['-n', nsB, 'addr', 'add', '198.18.0.2/24', 'dev', devB]);
    for (const [ns, dev] of [[nsA, devA], [nsB, devB]] as const) {
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', ns, 'link', 'set', dev, 'up']);
    }
  } catch (err) {
    destroy();
    throw err;
  }
  return {
    nsA, nsB, devA, devB,
    ifindexA: ifindexIn(nsA, devA),
    ifindexB: ifindexIn(nsB, devB),
    ping(count: number): boolean {
      try {
        ip(['netns', 'exec', nsA, 'ping', '-q', '-c', String(count), '-i', '0.1', '-W', '2', '198.18.0.2']);
        return true;
      } catch {
        return false;
      }
    },
    destroy,
  };
}
