/**
 * Every accepted rule loads: each action of the language (with its variants) under each match
 * shape (none, frame, eth, ip, ipv6, ip.len, tcp, udp, icmp) at each hook, compiled alone and
 * followed by a rule that reads L3 and L4 fields (so the headers the action may have moved are
 * derived again correctly), loads in the kernel's verifier. A rule the checker refuses must be
 * one it refuses for a stated reason (listed below), never one that then fails to load.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compileGroup } from '../../src/compiler/index.js';
import { delayedMark } from '../../src/compiler/layout.js';
import { loadCompiled } from '../../src/live/index.js';
import type { Hook, Rule } from '../../src/rules/ast.js';
import { lookupField } from '../../src/rules/catalog.js';
import { parseRuleLine } from '../../src/rules/load.js';
import { parseRuleText } from '../../src/rules/parser.js';
import { kernelTest } from '../helpers/kernel.js';

const MATCHES = ['', 'frame', 'eth', 'ip', 'ipv6', 'ip.len > 20', 'tcp', 'udp', 'icmp'];

/** Each action of the catalog, with the variants that compile to different code. */
const ACTIONS = [
  'drop', 'pass',
  'set ip.ttl = 1', 'set ip.hdr_len = 24', 'set ipv6.hlim = 2', 'set tcp.flags.push = 1', 'set udp.dstport = 9', 'set eth.dst = 02:00:00:00:00:01',
  'duplicate', 'duplicate 3', 'set ip.ttl = 9, duplicate',
  'corrupt', 'corrupt 4',
  'truncate 60', 'truncate 14',
  'delay 10ms', 'delay 10ms jitter 2ms', 'reorder', 'reorder by 3 timeout 5ms',
  'reject', 'reject with port-unreachable', 'reject with admin-prohibited', 'reject with tcp-reset',
];

const HOOKS: Hook[] = ['xdp', 'ingress', 'egress'];

/** A second rule after the action's: it reads r7 and r8 (IP and L4 fields) and changes one. */
const FOLLOWER = 'tcp.dstport == 80 and ip.ttl > 1 => set tcp.window_size_value = 1000';

/** Why the checker may refuse a combination: the only reasons accepted here. */
const REFUSALS = [/duplicate cannot run at xdp/, /tcp-reset answers TCP only/];

function parse(text: string, hook: Hook, name: string): Rule {
  const r = parseRuleLine(text, { dev: 'x', hook }).groups[0]!.rules[0]!;
  return { ...r, name };
}

/** Compiles and loads the rules; returns the refusal message, or undefined when they loaded. */
function loads(hook: Hook, texts: string[]): string | undefined {
  let rules: Rule[];
  try {
    rules = texts.map((t, i) => parse(t, hook, `rule-${i + 1}`));
  } catch (err) {
    return `refused: ${(err as Error).message.split('\n')[0]}`;
  }
  const holding = rules.flatMap((r, i) => (r.actions.some((a) => a.kind === 'delay' || a.kind === 'reorder') ? [i] : []));
  const hold = holding.length > 0 ? { rule: new Map(holding.map((i) => [i, 1] as [number, number])), follower: 1, mark: delayedMark(7) } : undefined;
  try {
    const compiled = compileGroup({ dev: 'x', hook, rules }, { seed: 1, lookupField, hold });
    loadCompiled(compiled).close();
  } catch (err) {
    return `refused: ${(err as Error).message.split('\n')[0]}`;
  }
  return undefined;
}

test('the actions tried cover every kind of action the language has', () => {
  const kinds = new Set(ACTIONS.flatMap((a) => parseRuleText(`=> ${a}`).actions.map((x) => x.kind)));
  assert.deepEqual([...kinds].sort(), ['corrupt', 'delay', 'drop', 'duplicate', 'pass', 'reject', 'reorder', 'set', 'truncate']);
});

for (const hook of HOOKS) {
  kernelTest(`${hook}: every action under every match shape loads in the verifier, alone and before a rule reading L3 and L4`, () => {
    const failures: string[] = [];
    let loaded = 0;
    for (const match of MATCHES) {
      for (const action of ACTIONS) {
        const text = `${match ? `${match} ` : ''}=> ${action}`;
        for (const texts of [[text], [text, FOLLOWER]]) {
          const why = loads(hook, texts);
          if (why === undefined) loaded++;
          else if (!REFUSALS.some((r) => r.test(why))) failures.push(`${texts.join(' ; ')}: ${why}`);
        }
      }
    }
    assert.deepEqual(failures, []);
    // Only duplicate at xdp and tcp-reset without a tcp match are refused.
    const duplicates = ACTIONS.filter((a) => a.includes('duplicate')).length;
    const refused = (hook === 'xdp' ? duplicates * MATCHES.length : 0) + (MATCHES.length - 1);
    assert.equal(loaded, 2 * (MATCHES.length * ACTIONS.length - refused));
  }, { timeout: 600_000 });
}
