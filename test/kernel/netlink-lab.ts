/**
 * Two fresh network namespaces joined by a veth pair, for the netlink and attach tests.
 * Addresses come from 198.18.0.0/15 only; cleanup() deletes both namespaces (and with them
 * the veth pair and anything attached to it).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { uniqueName } from '../helpers/kernel.js';
import { Assembler, imm } from '../../src/bpf/asm.js';
import { R0, R1, R2, R10 } from '../../src/bpf/opcodes.js';
import { createMap, type BpfMap } from '../../src/kernel/map.js';
import { loadProgram, type Program } from '../../src/kernel/program.js';

export interface VethLab {
  /** Namespace holding devA (the side programs get attached to). */
  nsA: string;
  nsB: string;
  devA: string;
  devB: string;
  addrA: string;
  addrB: string;
  cleanup(): void;
}

let labCount = 0;

export function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function makeVethLab(): VethLab {
  labCount += 1;
  const nsA = uniqueName('nlA');
  const nsB = uniqueName('nlB');
  const devA = uniqueName('va');
  const devB = uniqueName('vb');
  const third = (process.pid + labCount) % 250;
  const addrA = `198.18.${third}.1`;
  const addrB = `198.18.${third}.2`;
  const lab: VethLab = {
    nsA, nsB, devA, devB, addrA, addrB,
    cleanup() {
      for (const ns of [nsA, nsB]) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    },
  };
  try {
    ip('netns', 'add', nsA);
    ip('netns', 'add', nsB);
    // No IPv6 on the pair: its housekeeping (MLD reports, router solicitations, DAD) goes out at
    // random moments up to a second or more after link up, and a slow machine then counts it
    // in a test that expects only its own pings.
    for (const ns of [nsA, nsB]) {
      ip('netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
    }
    ip('-n', nsA, 'link', 'add', devA, 'type', 'veth', 'peer', 'name', devB, 'netns', nsB);
    ip('-n', nsA, 'addr', 'add', `${addrA}/24`, 'dev', devA);
    ip('-n', nsB, 'addr', 'add', `${addrB}/24`, 'dev', devB);
    for (const [ns, dev] of [[nsA, devA], [nsB, devB]] as const) {
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      ip('-n', ns, 'link', 'set', dev, 'up');
    }
  } catch (err) {
    lab.cleanup();
    throw err;
  }
  return lab;
}

/** Pings `to` from namespace `ns`; returns how many replies came back. */
export function ping(ns: string, to: string, count = 3): number {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', to], { encoding: 'utf8' });
  const m = /(\d+) received/.exec(r.stdout ?? '');
  return m ? Number(m[1]) : 0;
}

const BPF_FUNC_map_lookup_elem = 1;
const XDP_PASS = 2;
const TC_ACT_OK = 0;

export interface Counter {
  prog: Program;
  map: BpfMap;
  /** Packets the program has seen. */
  count(): bigint;
  close(): void;
}

/** A program that counts every packet in a one-slot array map and lets it pass. */
export function loadCounter(type: 'xdp' | 'sched_cls', name: string): Counter {
  const map = createMap({ type: 'array', keySize: 4, valueSize: 8, maxEntries: 1, name: `${name}_m` });
  try {
    const a = new Assembler()
      .st(4, R10, -4, 0)
      .mov64(R2, R10)
      .alu64('add', R2, imm(-4))
      .ldMap(R1, 'counter')
      .call(BPF_FUNC_map_lookup_elem)
      .jmp('jeq', R0, imm(0), 'out')
      .movImm(R1, 1)
      .atomicAdd(8, R0, 0, R1)
      .label('out')
      .movImm(R0, type === 'xdp' ? XDP_PASS : TC_ACT_OK)
      .exit();
    const { insns, mapRefs } = a.assemble();
    const prog = loadProgram({ type, insns, mapRefs, maps: { counter: map }, name });
    return {
      prog,
      map,
      count: () => map.lookup(new Uint8Array(4))?.readBigUInt64LE(0) ?? 0n,
      close() {
        prog.close();
        map.close();
      },
    };
  } catch (err) {
    map.close();
    throw err;
  }
}
