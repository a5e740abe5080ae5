/**
 * Fuzzes the ELF reader and object linker (what `netmangle load` and `replay OBJECT` read)
 * with objects mutated from ones netmangle builds: each is read and every program linked, or
 * refused with one NetmangleError naming what is wrong.
 */
import { test } from 'node:test';
import { buildObjectFromGroups } from '../../src/elf/build.js';
import { parseObject } from '../../src/elf/object.js';
import { parseRuleLine } from '../../src/rules/load.js';
import type { RuleGroup } from '../../src/rules/ast.js';
import { assertNoFindings, fuzz, fuzzTestOptions, judge, mutateBytes } from './engine.js';

const group = (text: string, hook: 'xdp' | 'ingress' | 'egress', opts: Record<string, string | boolean> = {}): RuleGroup =>
  parseRuleLine(text, { dev: 'veth0', hook, ...opts }).groups[0]!;

const CORPUS = [
  buildObjectFromGroups([group('icmp.type == 8 => drop', 'xdp')], 1).bytes,
  buildObjectFromGroups([group('tcp => set ip.ttl = random(1, ip.ttl)', 'egress', { every: '3' }), group('udp => duplicate', 'ingress')], 2).bytes,
  buildObjectFromGroups([group('tcp.flags.syn == 1 => drop', 'egress', { perConnection: true, first: '1', limit: '10/s' } as never)], 3, { sections: 'tcx' }).bytes,
];

/** Reads an object and links each of its programs. */
export function checkObject(bytes: Uint8Array): string | undefined {
  try {
    const object = parseObject(bytes, 'fuzz.o');
    for (const p of object.programs) object.link(p.name);
    return undefined;
  } catch (err) {
    return judge(err, [1, 2]);
  }
}

test('fuzz: ELF reader and object linker', fuzzTestOptions('elf'), async (t) => {
  const report = await fuzz({
    name: 'elf',
    corpus: CORPUS,
    mutate: (rng, input, corpus) => mutateBytes(rng, input, corpus),
    check: checkObject,
    encode: (b) => b,
    decode: (b) => b,
    ext: 'o',
  });
  assertNoFindings(report, t);
});
