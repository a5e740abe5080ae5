/** netmangle's side of each comparison: the demo's two rules and generated port rules. */
import { compileGroup, type CompiledProgram } from '../../src/compiler/index.js';
import { PSH_RULE, TTL_RULE } from '../../src/cli/commands/demo.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine } from '../../src/rules/load.js';
import type { Hook, RuleGroup } from '../../src/rules/ast.js';

export { PSH_RULE, TTL_RULE };

/** The PSH anchor acts on about 1 in 10 eligible packets; netmangle's rule says the same. */
export const PSH_PROBABILITY = 0.1;

export const BENCH_SEED = 12345;

export interface RuleSpec {
  text: string;
  hook: Hook;
  probability?: number;
  name?: string;
}

/** One group holding the rules, in order, for an interface. */
export function ruleGroup(rules: readonly RuleSpec[], dev: string, netns?: string): RuleGroup {
  const groups = rules.map((r, i) =>
    parseRuleLine(r.text, { dev, hook: r.hook, netns, probability: r.probability, name: r.name ?? `rule-${i + 1}` }).groups[0]!,
  );
  const group = groups[0]!;
  for (const g of groups.slice(1)) group.rules.push(...g.rules);
  return group;
}

export function compileRules(rules: readonly RuleSpec[], dev = 'eth0'): CompiledProgram {
  return compileGroup(ruleGroup(rules, dev), { seed: BENCH_SEED, lookupField });
}

export const pshRule: RuleSpec = { text: PSH_RULE, hook: 'egress', probability: PSH_PROBABILITY, name: 'psh' };
export const ttlRule: RuleSpec = { text: TTL_RULE, hook: 'xdp', name: 'ttl' };

/** `count` rules `tcp.dstport == PORT => set tcp.flags.push = 1` (probability 0.1), one port each. */
export function portRules(ports: readonly number[]): RuleSpec[] {
  return ports.map((p) => ({ text: `tcp.dstport == ${p} => set tcp.flags.push = 1`, hook: 'egress' as const, probability: PSH_PROBABILITY, name: `port-${p}` }));
}

/** Ports for the many-rules measurement: none of them is iperf3's 5201, so traffic matches no rule. */
export function rulePorts(count: number): number[] {
  return Array.from({ length: count }, (_, i) => 20001 + i);
}
