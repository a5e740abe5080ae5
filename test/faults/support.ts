/**
 * Shared steps of the fault and trigger tests: rules with their trigger options compiled,
 * then run packet after packet through the VM (interpreter and JIT, maps created as
 * src/live's loadCompiled creates them in the kernel) and through the kernel's
 * BPF_PROG_TEST_RUN, with the verdict and bytes of every run compared.
 */
import assert from 'node:assert/strict';
import { compileGroup, STATE_MAP, readCounters, type CompiledProgram, type RuleCounters } from '../../src/compiler/index.js';
import { pinThread } from '../../src/kernel/affinity.js';
import { testRun } from '../../src/kernel/index.js';
import { loadCompiled, type LoadedProgram } from '../../src/live/index.js';
import type { Hook, Rule } from '../../src/rules/ast.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine, type RuleLineOptions } from '../../src/rules/load.js';
import { ArrayMap, createMap, Vm, type VmMap } from '../../src/vm/index.js';
import { diffHex } from '../helpers/packets.js';

/** One rule from its one-line text and options, checked as `netmangle run` checks it. */
export function faultRule(text: string, hook: Hook, opts: Omit<RuleLineOptions, 'dev' | 'hook'> = {}): Rule {
  return parseRuleLine(text, { dev: 'x', hook, ...opts }).groups[0]!.rules[0]!;
}

export function compileRules(hook: Hook, rules: Rule[], seed = 1): CompiledProgram {
  return compileGroup({ dev: 'x', hook, rules }, { seed, lookupField });
}

export interface Outcome {
  retval: number;
  data: Uint8Array;
}

export interface Engine {
  readonly name: string;
  run(frame: Uint8Array, ktimeNs?: number): Outcome;
  counters(): RuleCounters[];
  close(): void;
}

/** The program in the VM, its maps as loadCompiled makes them (CPU 0's state). */
export function vmEngine(compiled: CompiledProgram, engine: 'jit' | 'interpreter'): Engine & { vm: Vm } {
  const maps: Record<string, VmMap> = {};
  for (const spec of compiled.maps) {
    maps[spec.name] = createMap({ type: spec.type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries, name: spec.name, cpus: 1 });
  }
  const state = maps[STATE_MAP] as ArrayMap;
  state.update(0, compiled.initialState(0));
  const vm = new Vm(compiled.insns, { programType: compiled.kind, maps, mapRefs: compiled.mapRefs, engine, cpu: 0 });
  return {
    name: engine,
    vm,
    run(frame, ktimeNs = 0) {
      const r = vm.run(frame, { ktimeNs });
      return { retval: r.retval | 0, data: r.copyPacket() };
    },
    counters: () => readCounters(compiled.rules.length, [state.valueAt(0, 0)]).rules,
    close() {},
  };
}

/** The program in the kernel; every CPU starts from CPU 0's state and the thread stays on one CPU. */
export function kernelEngine(compiled: CompiledProgram): Engine & { loaded: LoadedProgram } {
  const loaded = loadCompiled(compiled);
  loaded.maps[STATE_MAP]!.update(new Uint8Array(4), compiled.initialState(0));
  return {
    name: 'kernel',
    loaded,
    run(frame) {
      const r = testRun(loaded.prog, { data: frame });
      return { retval: r.retval | 0, data: r.data };
    },
    counters: () => loaded.counters().rules,
    close: () => loaded.close(),
  };
}

/**
 * Runs the frames in order through the kernel and both VM engines; asserts that every run
 * gives the same verdict and bytes everywhere and the counters agree at the end. Returns
 * the kernel's outcomes and counters.
 */
export function runEverywhere(compiled: CompiledProgram, frames: Uint8Array[]): { outcomes: Outcome[]; counters: RuleCounters[] } {
  const pin = pinThread();
  const engines: Engine[] = [];
  try {
    engines.push(kernelEngine(compiled), vmEngine(compiled, 'interpreter'), vmEngine(compiled, 'jit'));
    const outcomes: Outcome[] = [];
    frames.forEach((frame, i) => {
      const results = engines.map((e) => e.run(frame));
      const ref = results[0]!;
      results.slice(1).forEach((r, k) => {
        const who = `packet ${i}: ${engines[k + 1]!.name} vs kernel`;
        assert.equal(r.retval, ref.retval, `${who}: verdict`);
        assert.deepEqual(r.data, ref.data, `${who}: bytes\n${diffHex(r.data, ref.data)}`);
      });
      outcomes.push(ref);
    });
    const counters = engines.map((e) => e.counters());
    for (let k = 1; k < engines.length; k++) assert.deepEqual(counters[k], counters[0], `counters: ${engines[k]!.name} vs kernel`);
    return { outcomes, counters: counters[0]! };
  } finally {
    for (const e of engines) e.close();
    pin.restore();
  }
}
