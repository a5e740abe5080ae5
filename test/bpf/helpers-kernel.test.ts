/**
 * The helper table against the running kernel's verifier. A program that only calls helper N
 * (r1 holds the context, r2..r5 are unset) tells, by how the verifier refuses it, whether the
 * program type may call N at all, whether N is GPL-only, how many arguments it reads and what
 * it expects in r1.
 */
import assert from 'node:assert/strict';
import { kernelTest } from '../helpers/kernel.js';
import { loadProgram, VerifierError, type ProgramType } from '../../src/kernel/index.js';
import { Assembler, HELPERS, type ArgKind, type HelperSpec } from '../../src/bpf/index.js';

interface Outcome { loaded: boolean; log: string }

function callOnly(h: HelperSpec, type: ProgramType, license = 'GPL'): Outcome {
  const { insns } = new Assembler().call(h.id).movImm(0, 0).exit().assemble();
  try {
    const prog = loadProgram({ type, insns, license });
    prog[Symbol.dispose]();
    return { loaded: true, log: '' };
  } catch (err) {
    if (err instanceof VerifierError) return { loaded: false, log: err.log };
    throw err;
  }
}

const REFUSED_HELPER = /program of this type cannot use helper|unknown func/;

/** Helpers the kernel lets a type call that we list for other types only, and why. */
const KNOWN_EXTRA = new Set([
  // XDP gets a variant without arguments that reads the current task's classid.
  'get_cgroup_classid/xdp',
]);

kernelTest('each described helper is callable exactly from the program types we list', () => {
  const wrong: string[] = [];
  for (const h of HELPERS) {
    for (const type of ['xdp', 'sched_cls', 'sched_act'] as const) {
      const { loaded, log } = callOnly(h, type);
      const kernelAllows = loaded || !REFUSED_HELPER.test(log);
      const weSay = h.progTypes.includes(type);
      if (kernelAllows !== weSay && !(kernelAllows && KNOWN_EXTRA.has(`${h.name}/${type}`))) {
        wrong.push(`${h.name} in ${type}: kernel ${kernelAllows ? 'allows' : 'refuses'} it`);
      }
    }
  }
  assert.deepEqual(wrong, []);
});

kernelTest('gplOnly matches the kernel', () => {
  const wrong: string[] = [];
  for (const h of HELPERS) {
    const { log } = callOnly(h, h.progTypes[0]!, 'Proprietary');
    const gplOnly = /GPL/.test(log);
    if (gplOnly !== h.gplOnly) wrong.push(`${h.name}: kernel says ${gplOnly ? '' : 'not '}GPL-only`);
  }
  assert.deepEqual(wrong, []);
});

/** What the verifier names as expected when r1 holds the context but the helper wants `kind`. */
const EXPECTED_FOR: Partial<Record<ArgKind, RegExp>> = {
  map: /expected=map_ptr/,
  mem: /expected=fp/,
  mem_or_null: /expected=fp/,
  fixed_mem: /expected=fp/,
  sock_common: /expected=sock_common/,
  // Linux 6.2 renamed the ring buffer's memory type (MEM_ALLOC became MEM_RINGBUF): 6.1 says alloc_mem.
  ringbuf_mem: /expected=(ringbuf_mem|alloc_mem)\b/,
  spin_lock: /expected=map_value/,
};

/** The verifier's complaint: the last line of the log that is not its statistics. */
function complaint(log: string): string {
  return log.trim().split('\n').filter((l) => !/^(processed \d+ insns|verification time)/.test(l)).pop() ?? '';
}

kernelTest('arity and first argument kind match the verifier', () => {
  const wrong: string[] = [];
  for (const h of HELPERS) {
    const { loaded, log } = callOnly(h, h.progTypes[0]!);
    const first = h.args[0];
    let ok: boolean;
    if (first === undefined) ok = loaded;
    else if (first === 'ctx' || first === 'anything') ok = h.args.length === 1 ? loaded : /R2 !read_ok/.test(log);
    else {
      const expected = EXPECTED_FOR[first];
      ok = !loaded && /R1 type=ctx expected=/.test(log) && (expected === undefined || expected.test(log));
    }
    if (!ok) wrong.push(`${h.name}(${h.args.join(', ')}): ${loaded ? 'loaded' : complaint(log)}`);
  }
  assert.deepEqual(wrong, []);
});
