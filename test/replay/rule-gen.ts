/**
 * Random rules drawn from the rule language's grammar, as text (what users write), checked by
 * the real parser and checker: matches over every kind of field, protocol tests, sets, ranges,
 * address blocks, and/or/not; actions setting one to three fields with constants, fields,
 * arithmetic, random(), min() and max(), or drop / pass; probability, every-N, checksum keep.
 * Constants lean towards the values the test packets carry, so that rules match often.
 */
import fc from 'fast-check';
import type { FieldDef, Hook, Layer, Rule } from '../../src/rules/ast.js';
import { FIELDS } from '../../src/rules/catalog.js';
import { checkRule } from '../../src/rules/check.js';
import { parseRuleText } from '../../src/rules/parser.js';

const numeric = (hook: Hook) => FIELDS.filter((f) => !f.either && f.width <= 4 && f.kind !== 'ipv4' && f.special === undefined
  && (hook === 'xdp' || f.layer !== 'vlan'));
const readable = (hook: Hook) => [...numeric(hook), ...FIELDS.filter((f) => f.special === 'frame.len')];
const writable = (hook: Hook) => numeric(hook).filter((f) => f.writable);
const addressFields = (hook: Hook) => FIELDS.filter((f) => !f.either && (f.kind === 'ipv4' || f.kind === 'ipv6' || f.kind === 'mac') && (hook === 'xdp' || f.layer !== 'vlan'));

/** Values the crafted packets carry (TTLs, ports, protocols, flags, lengths, types). */
const INTERESTING = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 20, 24, 40, 53, 57, 58, 64, 100, 123, 128, 129, 200, 255, 502, 1234, 5201, 40000, 40001, 0x010, 0x018, 0x0800, 0x86dd, 0x8100, 0x12345];

/** A constant field f can hold (a multiple of its scale, at most its max). */
function constFor(f: FieldDef): fc.Arbitrary<number> {
  const units = f.mask;
  const fit = (v: number) => Math.min(units, Math.floor(v / f.scale)) * f.scale;
  return fc.oneof(
    fc.constantFrom(...INTERESTING).map(fit),
    fc.nat(units).map((k) => k * f.scale),
  );
}

const hex = (v: number) => (v > 9 && v % 3 === 0 ? `0x${v.toString(16)}` : String(v));

const ADDRESSES: Record<'ipv4' | 'ipv6' | 'mac', string[]> = {
  ipv4: ['198.18.0.1', '198.18.0.2', '198.19.7.7', '198.18.0.9', '198.18.0.0/15', '198.19.0.0/16', '198.18.0.0/24', '198.19.255.1'],
  ipv6: ['2001:db8::1', '2001:db8::2', '2001:db8::3', '2001:db8::/32', '2001:db8:ffff::/48', '2001:db8:1::2'],
  mac: ['02:00:00:00:00:01', '02:00:00:00:00:02', '02:00:00:00:00:07'],
};

function fieldArb(fields: FieldDef[]): fc.Arbitrary<FieldDef> {
  return fc.constantFrom(...fields);
}

/** A numeric expression for a match or a set value. */
function exprArb(hook: Hook, forSet?: FieldDef): fc.Arbitrary<string> {
  const read = fieldArb(readable(hook)).map((f) => f.name);
  const ops = fc.constantFrom('+', '-', '*', '/', '%', '&', '|', '^', '<<', '>>');
  const arith = fc.tuple(read, ops, fc.oneof(fc.integer({ min: 1, max: 63 }), fc.constantFrom(...INTERESTING.filter((v) => v > 0))))
    .map(([f, op, c]) => `${f} ${op} ${op === '<<' || op === '>>' ? c % 64 : hex(c)}`);
  const parts: fc.Arbitrary<string>[] = [read, arith];
  if (forSet) {
    const c = constFor(forSet);
    parts.push(
      c.map(hex),
      fc.tuple(c, c).map(([a, b]) => `random(${Math.min(a, b)}, ${Math.max(a, b)})`),
      fc.tuple(fc.constantFrom(0, 1), read).map(([lo, f]) => `random(${lo}, ${f})`),
      fc.tuple(fc.constantFrom('min', 'max'), read, c).map(([fn, f, k]) => `${fn}(${f}, ${k})`),
    );
  }
  return fc.oneof(...parts);
}

function comparisonArb(hook: Hook): fc.Arbitrary<string> {
  const cmp = fc.constantFrom('==', '!=', '<', '<=', '>', '>=');
  const withConst = fieldArb(numeric(hook)).chain((f) => fc.tuple(cmp, constFor(f)).map(([op, c]) => `${f.name} ${op} ${hex(c)}`));
  const twoFields = fc.tuple(exprArb(hook), cmp, exprArb(hook)).map(([a, op, b]) => `${a} ${op} ${b}`);
  const inSet = fieldArb(numeric(hook)).chain((f) => fc.array(fc.tuple(constFor(f), fc.option(constFor(f), { nil: undefined })), { minLength: 1, maxLength: 3 })
    .map((items) => `${f.name} in {${items.map(([a, b]) => (b === undefined ? hex(a) : `${Math.min(a, b)}..${Math.max(a, b)}`)).join(', ')}}`));
  const address = fieldArb(addressFields(hook)).chain((f) => fc.tuple(fc.constantFrom('==', '!='), fc.constantFrom(...ADDRESSES[f.kind as 'ipv4' | 'ipv6' | 'mac']))
    .map(([op, a]) => `${f.name} ${op} ${f.kind === 'mac' ? a.split('/')[0] : a}`));
  const either = fc.tuple(fc.constantFrom('ip.addr', 'ipv6.addr', 'tcp.port', 'udp.port'), fc.constantFrom('==', '!='))
    .chain(([name, op]) => (name === 'ip.addr' ? fc.constantFrom(...ADDRESSES.ipv4) : name === 'ipv6.addr' ? fc.constantFrom(...ADDRESSES.ipv6) : fc.constantFrom('53', '5201', '40000', '123'))
      .map((v) => `${name} ${op} ${v}`));
  const truthy = fc.oneof(fieldArb(numeric(hook)).map((f) => f.name), fc.tuple(fieldArb(numeric(hook)), fc.constantFrom(1, 2, 0x12, 0xff, 0x10)).map(([f, m]) => `${f.name} & ${hex(m)}`));
  const protos = ['frame', 'eth', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6', ...(hook === 'xdp' ? ['vlan'] : [])];
  const proto = fc.constantFrom(...protos);
  return fc.oneof(
    { arbitrary: proto, weight: 6 }, { arbitrary: withConst, weight: 3 }, { arbitrary: twoFields, weight: 1 }, { arbitrary: inSet, weight: 1 },
    { arbitrary: address, weight: 2 }, { arbitrary: either, weight: 1 }, { arbitrary: truthy, weight: 1 },
  );
}

function condArb(hook: Hook): fc.Arbitrary<string> {
  const leaf = comparisonArb(hook);
  const { cond } = fc.letrec<{ cond: string }>((tie) => ({
    cond: fc.oneof(
      { depthSize: 'small', maxDepth: 2, withCrossShrink: true },
      leaf,
      leaf,
      fc.tuple(tie('cond'), fc.constantFrom('and', 'or', '&&', '||'), tie('cond')).map(([a, op, b]) => `(${a}) ${op} (${b})`),
      tie('cond').map((c) => `not (${c})`),
    ),
  }));
  return cond;
}

function setArb(hook: Hook, layer?: Layer): fc.Arbitrary<string> {
  const inLayer = (f: FieldDef) => layer === undefined || f.layer === layer;
  const wideAll = FIELDS.filter((f) => f.writable && (f.width === 6 || f.width === 16 || f.kind === 'ipv4') && (hook === 'xdp' || f.layer !== 'vlan'));
  const wide = wideAll.filter(inLayer);
  const wideSet = wide.length === 0 ? undefined : fc.constantFrom(...wide).chain((f) => {
    const peers = wideAll.filter((g) => g.kind === f.kind && g !== f).map((g) => g.name);
    const consts = ADDRESSES[f.kind as 'ipv4' | 'ipv6' | 'mac'].filter((a) => !a.includes('/'));
    return fc.constantFrom(...consts, ...peers).map((v) => `set ${f.name} = ${v}`);
  });
  const nums = writable(hook).filter(inLayer);
  const numSet = fieldArb(nums.length > 0 ? nums : writable(hook)).chain((f) => (f.kind === 'bool' ? fc.constantFrom('0', '1', f.name) : exprArb(hook, f)).map((v) => `set ${f.name} = ${v}`));
  return wideSet ? fc.oneof(numSet, numSet, numSet, wideSet) : numSet;
}

function actionsArb(hook: Hook, layer?: Layer): fc.Arbitrary<string> {
  const set = fc.oneof({ arbitrary: setArb(hook, layer), weight: 3 }, { arbitrary: setArb(hook), weight: 1 });
  return fc.oneof(
    { arbitrary: fc.tuple(fc.array(set, { minLength: 1, maxLength: 3 }), fc.constantFrom('', '', ', pass')).map(([sets, tail]) => sets.join(', ') + tail), weight: 5 },
    { arbitrary: fc.constant('drop'), weight: 1 },
    { arbitrary: fc.constant('pass'), weight: 1 },
  );
}

/** A match and actions about one layer (`tcp and (...) => set tcp.…`), or about anything. */
function ruleTextArb(hook: Hook): fc.Arbitrary<string> {
  const layers: Layer[] = ['eth', 'ip', 'ipv6', 'tcp', 'udp', 'icmp', 'icmpv6', ...(hook === 'xdp' ? ['vlan' as const] : [])];
  const focused = fc.constantFrom(...layers).chain((layer) => fc.tuple(
    fc.oneof(fc.constant(layer as string), condArb(hook).map((c) => `${layer} and (${c})`)),
    actionsArb(hook, layer),
  ));
  const any = fc.tuple(condArb(hook), actionsArb(hook));
  return fc.oneof({ arbitrary: focused, weight: 2 }, { arbitrary: any, weight: 1 }).map(([c, a]) => `${c} => ${a}`);
}

export interface RandomRule {
  text: string;
  probability?: number;
  every?: number;
  checksum: 'fix' | 'keep';
}

/** Rule text and options, not yet checked (checkRandomRule filters). */
export function ruleArb(hook: Hook): fc.Arbitrary<RandomRule> {
  return fc.record({
    text: ruleTextArb(hook),
    // Mostly absent (always act), so that rules change many packets.
    probability: fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary: fc.constantFrom(0.1, 0.5, 0.9, 0.25), weight: 1 }),
    every: fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary: fc.integer({ min: 2, max: 5 }), weight: 1 }),
    checksum: fc.constantFrom<'fix' | 'keep'>('fix', 'fix', 'fix', 'keep'),
  }, { requiredKeys: ['text', 'checksum'] });
}

/** The checked Rule, or undefined when the checker refuses the text (an overlap, a value that cannot fit). */
export function checkRandomRule(r: RandomRule, hook: Hook, name: string): Rule | undefined {
  try {
    const checked = checkRule(parseRuleText(r.text), r.text, hook);
    const rule: Rule = { name, text: r.text, match: checked.match, actions: checked.actions, checksum: r.checksum };
    if (r.probability !== undefined) rule.probability = r.probability;
    if (r.every !== undefined) rule.every = r.every;
    return rule;
  } catch (err) {
    if ((err as Error).name === 'RuleError') return undefined;
    throw err;
  }
}

/** One to three checked random rules for a hook. */
export function ruleGroupArb(hook: Hook): fc.Arbitrary<Rule[]> {
  return fc.array(ruleArb(hook), { minLength: 1, maxLength: 3 })
    .map((rs) => rs.map((r, i) => checkRandomRule(r, hook, `r${i + 1}`)))
    .filter((rs): rs is Rule[] => rs.every((r) => r !== undefined));
}
