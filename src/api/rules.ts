/**
 * Rules as the library takes them: one-line rules (`MATCH => ACTION, …`) with a target and the
 * trigger options the CLI has (`--first`, `--per-connection`, …), or a rule set already parsed
 * (from parseRules, loadRulesFile, loadRulesText). Everything ends up as checked RuleGroups.
 */
import { randomSeed } from '../compiler/prng.js';
import { UsageError } from '../errors.js';
import type { Hook, RuleGroup } from '../rules/ast.js';
import { checkNetns, checkSeed, parseRuleLine, type LoadedRules } from '../rules/load.js';

/**
 * Checked rules grouped by (namespace, interface, hook), one group per program, and the seed
 * the rules' source gave (a rules file's `seed:`), if any.
 */
export type RuleSet = LoadedRules;

/** Where one-line rules go: an interface, a hook, and the interface's network namespace. */
export interface Target {
  /** Interface name as `ip link` shows it inside `netns` (at most 15 bytes). */
  dev: string;
  /** `xdp` (receive, before the stack), `ingress` (tc receive) or `egress` (tc transmit). */
  hook: Hook;
  /**
   * The interface's network namespace: an `ip netns` name, or a path to a namespace file
   * (`/proc/PID/ns/net` of a container's process, a bind mount such as `/run/netns/X`).
   * Default: the namespace of the calling process.
   */
  netns?: string;
}

/**
 * When a one-line rule acts: the options `netmangle run` has for a one-line rule, as numbers
 * or as the strings a command line gives. A rules file sets these per rule instead.
 */
export interface Triggers {
  /** Act on a matching packet with this probability, 0 < p ≤ 1 (`0.05` or `"5%"`). */
  probability?: number | string;
  /** Act on the Nth, 2Nth … matching packet. */
  every?: number | string;
  /** Act on the first N matching packets (of those `after` and `every` let through). */
  first?: number | string;
  /** Skip the first N matching packets. */
  after?: number | string;
  /** Keep the counts of `first`, `after` and `every` per connection (both directions as one). */
  perConnection?: boolean;
  /** Connections `perConnection` remembers (LRU; default 65536). */
  connections?: number | string;
  /** Act on at most this many packets: `100/s`, `6000/min`, `10/h` (a token bucket in the program). */
  limit?: string;
  /** Act only this long after the rule's first matching packet: `500ms`, `10s`, `5m`. */
  startAfter?: string;
  /** Stop acting this long after the rule's first matching packet (kept by the program). */
  for?: string;
  /** `fix` (default) or `keep`: leave checksums stale on purpose. */
  checksum?: 'fix' | 'keep';
  /** `fix` (default) or `keep`: whether `truncate` shrinks the IP and UDP length fields. */
  lengths?: 'fix' | 'keep';
  /**
   * Name of the rule in counters (default `rule-1`). With several rules the names are
   * `NAME-1`, `NAME-2` … (default `rule-1`, `rule-2` …).
   */
  name?: string;
}

/** One-line rules (a string or several) or a rule set parsed before. */
export type RuleInput = string | readonly string[] | RuleSet;

const TRIGGER_KEYS: ReadonlyArray<keyof Triggers> = [
  'probability', 'every', 'first', 'after', 'perConnection', 'connections', 'limit', 'startAfter', 'for', 'checksum', 'lengths', 'name',
];

/** Whether `rules` is a parsed rule set rather than one-line rules. */
export function isRuleSet(rules: RuleInput): rules is RuleSet {
  return typeof rules === 'object' && rules !== null && !Array.isArray(rules) && Array.isArray((rules as RuleSet).groups);
}

/**
 * Parses and checks one-line rules for a target, with trigger options applied to each rule.
 * Several rules for one target make one group: one program, the rules in order.
 *
 * @throws UsageError (exit code 2) for a rule with a syntax error (the message names the
 *   column), an unknown field, an action the hook cannot do, or a bad target or trigger value.
 */
export function parseRules(rules: string | readonly string[], target: Target, triggers: Triggers = {}): RuleSet {
  const lines = typeof rules === 'string' ? [rules] : [...rules];
  if (lines.length === 0) throw new UsageError('no rules given', { hint: "give one rule, for example 'icmp.type == 8 => drop'" });
  if (target === null || typeof target !== 'object') throw new UsageError('the target must be an object { dev, hook, netns? }');
  for (const key of Object.keys(triggers)) {
    if (!(TRIGGER_KEYS as readonly string[]).includes(key)) {
      throw new UsageError(`unknown trigger option "${key}"`, { hint: `trigger options: ${TRIGGER_KEYS.join(', ')}` });
    }
  }
  const rulesOut: RuleGroup['rules'] = [];
  let group: RuleGroup | undefined;
  lines.forEach((line, i) => {
    if (typeof line !== 'string') throw new UsageError(`rule ${i + 1} is not a string`);
    const name = lines.length === 1 ? triggers.name : `${triggers.name ?? 'rule'}-${i + 1}`;
    const parsed = parseRuleLine(line, {
      ...triggers,
      dev: target.dev,
      hook: target.hook,
      netns: target.netns,
      name,
      optionStyle: 'api',
    });
    const g = parsed.groups[0]!;
    group ??= { ...g, rules: rulesOut };
    rulesOut.push(...g.rules);
  });
  return { groups: [group!] };
}

/**
 * The groups of `rules` (one-line rules with `target`, or a rule set, whose groups without a
 * namespace take `target.netns`), and the seed to use: `seed`, else the rule set's, else random.
 */
export function resolveRules(rules: RuleInput, target: Partial<Target> | undefined, triggers: Triggers, seed: number | undefined): { groups: RuleGroup[]; seed: number } {
  let set: RuleSet;
  if (isRuleSet(rules)) {
    const given = TRIGGER_KEYS.filter((k) => triggers[k] !== undefined);
    if (given.length > 0) {
      throw new UsageError(`trigger option "${given[0]}" applies to one-line rules; a rule set has its triggers per rule`);
    }
    if (target?.dev !== undefined || target?.hook !== undefined) {
      throw new UsageError('a rule set names its own interfaces and hooks; the target may only give netns');
    }
    const netns = target?.netns === undefined ? undefined : checkNetns(target.netns, 'netns');
    if (rules.groups.length === 0) throw new UsageError('the rule set has no rules');
    set = { seed: rules.seed, groups: rules.groups.map((g) => (g.netns === undefined && netns !== undefined ? { ...g, netns } : g)) };
  } else {
    if (target === undefined) throw new UsageError('one-line rules need a target { dev, hook, netns? }');
    set = parseRules(rules, target as Target, triggers);
  }
  const chosen = seed !== undefined ? checkSeed(seed, 'seed') : set.seed;
  return { groups: set.groups, seed: chosen ?? randomSeed() };
}
