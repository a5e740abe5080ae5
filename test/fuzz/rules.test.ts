/**
 * Fuzzes the rule parser and checker with one-line rules mutated from a corpus of valid ones,
 * at every hook: each mutant is accepted or refused with one UsageError (exit 2). An accepted
 * rule must also survive the formatter: its printed form parses and checks again.
 */
import { test } from 'node:test';
import type { Hook } from '../../src/rules/ast.js';
import { formatRule } from '../../src/rules/format.js';
import { HOOKS, parseRuleLine } from '../../src/rules/load.js';
import { RULE_CORPUS } from './corpus.js';
import { assertNoFindings, fuzz, fuzzTestOptions, judge, mutateText, textCodec } from './engine.js';


/** A finding for one rule text at one hook, or undefined. */
export function checkRuleText(text: string, hook: Hook): string | undefined {
  let rule;
  try {
    rule = parseRuleLine(text, { dev: 'veth0', hook }).groups[0]!.rules[0]!;
  } catch (err) {
    return judge(err, [2]);
  }
  const printed = formatRule(rule);
  try {
    parseRuleLine(printed, { dev: 'veth0', hook });
  } catch (err) {
    return `accepted at ${hook}, but its formatted form ${JSON.stringify(printed.slice(0, 200))} is refused: ${String((err as Error).message).split('\n')[0]}`;
  }
  return undefined;
}

test('fuzz: rule parser and checker (one-line rules, every hook)', fuzzTestOptions('rules'), async (t) => {
  const report = await fuzz({
    name: 'rules',
    corpus: RULE_CORPUS,
    mutate: (rng, input, corpus) => mutateText(rng, input, corpus),
    check: (text) => {
      for (const hook of HOOKS) {
        const why = checkRuleText(text, hook);
        if (why) return `${hook}: ${why}`;
      }
      return undefined;
    },
    ...textCodec,
    ext: 'txt',
  });
  assertNoFindings(report, t);
});
