/**
 * Rules from the two places users write them: one rule on the command line
 * (`netmangle run --dev D --hook H 'MATCH => ACTION, …'`) and a rules file in YAML
 * (docs/rules.md describes the format). Both give checked rules grouped by
 * (namespace, interface, hook) in the order they first appear: one group, one program.
 */
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type * as YamlModule from 'yaml';
import type { Document, LineCounter, Node } from 'yaml';
import { UsageError } from '../errors.js';
import { connectionMapBytes, DEFAULT_CONNECTIONS, formatBytes, MAX_CONNECTIONS, type Action, type Hook, type RateLimit, type Rule, type RuleGroup } from './ast.js';
import { editDistance, fieldCatalog } from './catalog.js';
import { checkRule } from './check.js';
import { RuleError } from './errors.js';
import { MAX_ALIAS_EXPANSION, MAX_FILE_BYTES, MAX_NAME_LENGTH, MAX_RULE_DURATION_NS, MAX_RULES_PER_FILE, overLimit, overLimitMessage, shorten, shown } from './limits.js';
import { checkAliases, deepGuard, readRulesBytes } from './file-input.js';
import { fileValidatorFor } from './file-validator.js';
import { checkRuleLength, parseActionsAt, parseExprAt, parseMatchAt, parseRuleText, type ParsedRule } from './parser.js';

export const HOOKS: readonly Hook[] = ['xdp', 'ingress', 'egress'];

/** `every` is compiled into a 32-bit signed immediate. */
export const MAX_EVERY = 0x7fffffff;

/** Seeds are 32 bits: what `run` accepts and what a built object stores. */
export const MAX_SEED = 0xffffffff;

export interface LoadedRules {
  groups: RuleGroup[];
  /** The file's `seed:` (the one-line form passes --seed through here too). */
  seed?: number;
}

/** Options of the one-line form, as numbers or as the strings a command line gives. */
export interface RuleLineOptions {
  dev: string;
  hook: string;
  netns?: string;
  probability?: number | string;
  every?: number | string;
  seed?: number | string;
  name?: string;
  checksum?: string;
  after?: number | string;
  first?: number | string;
  perConnection?: boolean;
  connections?: number | string;
  /** `100/s` */
  limit?: string;
  /** Durations: `10m`, `30s`, `1h30m`, `500ms`. */
  for?: string;
  startAfter?: string;
  lengths?: string;
  /**
   * How messages name the options: `cli` (default) as command-line options (`--every`), `api`
   * as the library's option names (`every`).
   */
  optionStyle?: 'cli' | 'api';
}

/** The trigger options a rule takes, in both forms; each value as given. */
interface TriggerValues {
  after?: unknown;
  first?: unknown;
  perConnection?: unknown;
  connections?: unknown;
  limit?: unknown;
  for?: unknown;
  startAfter?: unknown;
  lengths?: unknown;
}

/** Option names of each trigger in the two forms, for messages. */
const TRIGGER_NAMES = {
  line: { after: '--after', first: '--first', perConnection: '--per-connection', connections: '--connections', limit: '--limit', for: '--for', startAfter: '--start-after', lengths: '--lengths', every: '--every' },
  api: { after: 'after', first: 'first', perConnection: 'perConnection', connections: 'connections', limit: 'limit', for: 'for', startAfter: 'startAfter', lengths: 'lengths', every: 'every' },
  file: { after: 'after:', first: 'first:', perConnection: 'per-connection:', connections: 'connections:', limit: 'limit:', for: 'for:', startAfter: 'start-after:', lengths: 'lengths:', every: 'every:' },
} as const;

/** Checks the trigger values and sets them on the rule. */
function applyTriggers(rule: Rule, v: TriggerValues, names: (typeof TRIGGER_NAMES)['line' | 'api' | 'file']): void {
  if (v.after !== undefined) rule.after = checkCount(v.after, names.after, 0, 'after: 100 skips the first 100 matching packets');
  if (v.first !== undefined) rule.first = checkCount(v.first, names.first, 1, 'first: 1 acts on the first matching packet only');
  if (v.perConnection !== undefined && v.perConnection !== false) {
    if (v.perConnection !== true) fail(names.perConnection, `must be true or false, not ${shown(v.perConnection)}`);
    if (rule.after === undefined && rule.first === undefined && (rule.every ?? 1) <= 1) {
      fail(names.perConnection, `counts packets per connection for ${names.first}, ${names.after} and ${names.every}, and none is given`, `for example ${names.first} 1 to act on the first matching packet of every connection`);
    }
    rule.perConnection = true;
    rule.connections = DEFAULT_CONNECTIONS;
  }
  if (v.connections !== undefined) {
    if (!rule.perConnection) fail(names.connections, `sizes the map of ${names.perConnection}, which is not given`);
    rule.connections = checkConnections(v.connections, names.connections);
  }
  if (v.limit !== undefined) rule.limit = checkRate(v.limit, names.limit);
  if (v.startAfter !== undefined) rule.startAfterNs = checkDuration(v.startAfter, names.startAfter);
  if (v.for !== undefined) rule.forNs = checkDuration(v.for, names.for);
  if (v.lengths !== undefined) rule.lengths = checkChecksum(v.lengths, names.lengths);
}

// ---------------------------------------------------------------- one-line form

/** One rule from the command line: `MATCH => ACTION[, ACTION]…` and its options. */
export function parseRuleLine(text: string, opts: RuleLineOptions): LoadedRules {
  if (text.trim() === '') {
    throw new UsageError('the rule is empty', { hint: "write MATCH => ACTION, for example 'icmp.type == 8 => drop'" });
  }
  checkRuleLength(text);
  const api = opts.optionStyle === 'api';
  const o = (name: string): string => (api ? name : `--${name}`);
  const hook = checkHook(opts.hook, o('hook'));
  const dev = checkDev(opts.dev, o('dev'));
  const netns = opts.netns === undefined ? undefined : checkNetns(opts.netns, o('netns'));
  const name = opts.name === undefined ? 'rule-1' : checkName(opts.name, o('name'));
  const rule: Rule = {
    name,
    text,
    ...checkRule(parseRuleText(text), text, hook),
    checksum: opts.checksum === undefined ? 'fix' : checkChecksum(opts.checksum, o('checksum')),
  };
  if (opts.probability !== undefined) rule.probability = checkProbability(opts.probability, o('probability'));
  if (opts.every !== undefined) rule.every = checkEvery(opts.every, o('every'));
  applyTriggers(rule, opts, api ? TRIGGER_NAMES.api : TRIGGER_NAMES.line);
  const group: RuleGroup = { dev, hook, rules: [rule] };
  if (netns !== undefined) group.netns = netns;
  const out: LoadedRules = { groups: [group] };
  if (opts.seed !== undefined) out.seed = checkSeed(opts.seed, o('seed'));
  return out;
}

// ---------------------------------------------------------------- option values

function fail(what: string, message: string, hint?: string): never {
  throw new UsageError(`${what} ${message}`, { hint });
}

export function checkHook(value: unknown, what: string): Hook {
  if (typeof value === 'string' && (HOOKS as readonly string[]).includes(value)) return value as Hook;
  const near = typeof value === 'string' ? HOOKS.find((h) => editDistance(h, value.toLowerCase(), 2) <= 2) : undefined;
  return fail(what, `must be one of ${HOOKS.join(', ')}, not ${shown(value)}`, near ? `did you mean ${near}?` : undefined);
}

/** Interface names: at most 15 bytes (IFNAMSIZ), no slash or whitespace, not . or .. */
export function checkDev(value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '') return fail(what, 'must name a network interface');
  if (Buffer.byteLength(value) > 15) fail(what, `"${shorten(value)}" is longer than the 15 bytes an interface name can have`);
  if (/[\s/:]/.test(value) || value === '.' || value === '..') fail(what, `"${value}" is not a valid interface name`);
  return value;
}

/** An `ip netns` name, or an absolute path to a namespace file (`/proc/PID/ns/net`, `/run/netns/X`). */
export function checkNetns(value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '') return fail(what, 'must name a network namespace');
  // Names and paths alike are at most PATH_MAX; a name in /run/netns at most NAME_MAX.
  if (Buffer.byteLength(value) > 4096) fail(what, `"${shorten(value)}" is longer than the 4096 bytes a namespace path can have`);
  if (value.startsWith('/')) {
    if (/[\s\0]/.test(value) || value.split('/').includes('..')) fail(what, `"${shorten(value)}" is not a valid namespace path`);
    return value;
  }
  if (value.includes('/') || value === '.' || value === '..' || /\s/.test(value)) fail(what, `"${shorten(value)}" is not a valid namespace name`);
  if (Buffer.byteLength(value) > 255) fail(what, `"${shorten(value)}" is longer than the 255 bytes a namespace name can have`);
  return value;
}

export function checkName(value: unknown, what: string): string {
  if (typeof value === 'string' && value.length > MAX_NAME_LENGTH) fail(what, overLimitMessage('the name', value.length, MAX_NAME_LENGTH, 'characters'));
  if (typeof value !== 'string' || !new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,${MAX_NAME_LENGTH - 1}}$`).test(value)) {
    return fail(what, `${shown(value)} is not a valid rule name`, `use letters, digits, and _ . : - (at most ${MAX_NAME_LENGTH} characters)`);
  }
  return value;
}

export function checkChecksum(value: unknown, what: string): 'fix' | 'keep' {
  if (value === 'fix' || value === 'keep') return value;
  return fail(what, `must be fix or keep, not ${shown(value)}`);
}

/** A probability in (0, 1]; strings may be decimals ("0.05") or percentages ("5%"). */
export function checkProbability(value: unknown, what: string): number {
  let p = typeof value === 'number' ? value : NaN;
  if (typeof value === 'string') {
    const t = value.trim();
    p = t.endsWith('%') ? Number(t.slice(0, -1)) / 100 : Number(t);
    if (t === '' || t === '%') p = NaN;
  }
  if (!Number.isFinite(p) || p <= 0 || p > 1) {
    return fail(what, `must be a number greater than 0 and at most 1, not ${shown(value)}`, 'for example 0.05 (or 5%) to act on one packet in twenty on average');
  }
  return p;
}

export function checkEvery(value: unknown, what: string): number {
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_EVERY) {
    return fail(what, `must be a whole number from 1 to ${MAX_EVERY}, not ${shown(value)}`, 'every: 3 acts on the 3rd, 6th, 9th … matching packet');
  }
  return n;
}

export { MAX_CONNECTIONS };

/** --connections / connections: a whole number up to MAX_CONNECTIONS; beyond, the refusal says the memory it would lock. */
function checkConnections(value: unknown, what: string): number {
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n === 'number' && Number.isInteger(n) && n > MAX_CONNECTIONS) {
    return fail(what, `must be at most ${MAX_CONNECTIONS}, not ${n}: that many connections would lock about ${formatBytes(connectionMapBytes(n))} of kernel memory (${MAX_CONNECTIONS} lock about ${formatBytes(connectionMapBytes(MAX_CONNECTIONS))})`,
      'when the map is full the connection used longest ago is forgotten, so fewer usually do');
  }
  return checkCount(value, what, 1, 'connections: 65536 (the default) remembers that many connections', MAX_CONNECTIONS);
}

/** A whole number from `min` to `max` (numbers, or digits in a string). */
export function checkCount(value: unknown, what: string, min: number, example: string, max = MAX_EVERY): number {
  const n = typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    return fail(what, `must be a whole number from ${min} to ${max}, not ${shown(value)}`, example);
  }
  return n;
}

const RATE_UNITS: Record<string, number> = { s: 1e9, sec: 1e9, second: 1e9, m: 60e9, min: 60e9, minute: 60e9, h: 3600e9, hour: 3600e9 };

/** `100/s`, `6000/min`, `10/h`: at most that many packets per unit of time. */
export function checkRate(value: unknown, what: string): RateLimit {
  const m = typeof value === 'string' ? /^\s*(\d+)\s*\/\s*([a-z]+)\s*$/.exec(value) : null;
  const packets = m ? Number(m[1]) : NaN;
  const intervalNs = m ? RATE_UNITS[m[2]!] : undefined;
  if (!m || intervalNs === undefined || !Number.isSafeInteger(packets) || packets < 1 || packets > 1e9) {
    return fail(what, `must be a rate like 100/s, 6000/min or 10/h, not ${shown(value)}`, 'the number is at most 1000000000');
  }
  return { packets, intervalNs, text: `${packets}/${m[2]}` };
}

const DURATION_UNITS: Record<string, number> = { ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** `500ms`, `10s`, `5m`, `1h30m` (a bare number in a rules file is seconds) → nanoseconds. */
export function checkDuration(value: unknown, what: string): number {
  if (typeof value === 'number' && Number.isFinite(value) && value > 0) {
    if (value * 1e9 > MAX_RULE_DURATION_NS) return fail(what, `${value} seconds is longer than the limit of ${MAX_RULE_DURATION_NS / 86_400e9} days (8760h; docs/limits.md)`);
    return Math.round(value * 1e9);
  }
  const text = typeof value === 'string' ? value.trim() : '';
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
  const ns = parts.reduce((sum, p) => sum + Number(p[1]) * DURATION_UNITS[p[2]!]!, 0);
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== text || !(ns > 0)) {
    return fail(what, `must be a duration like 500ms, 10s, 5m, 1h or 1m30s, not ${shown(value)}`);
  }
  if (ns > MAX_RULE_DURATION_NS) return fail(what, `${shown(value)} is longer than the limit of ${MAX_RULE_DURATION_NS / 86_400e9} days (8760h; docs/limits.md)`);
  return Math.round(ns);
}

export function checkSeed(value: unknown, what: string): number {
  let n = value;
  if (typeof value === 'string') {
    const t = value.trim();
    n = /^\d+$/.test(t) || /^0x[0-9a-f]+$/i.test(t) ? Number(t) : NaN;
  }
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0 || n > MAX_SEED) {
    return fail(what, `must be a whole number from 0 to ${MAX_SEED}, not ${shown(value)}`);
  }
  return n;
}

// ---------------------------------------------------------------- rules file

const RULE_KEYS = [
  'name', 'dev', 'hook', 'netns', 'match', 'set', 'action', 'rule', 'probability', 'every', 'checksum',
  'after', 'first', 'per-connection', 'connections', 'limit', 'for', 'start-after', 'lengths',
] as const;
const TOP_KEYS = ['seed', 'dev', 'hook', 'netns', 'checksum', 'rules'] as const;

const ruleSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: { type: 'string' },
    dev: { type: 'string' },
    hook: { enum: HOOKS },
    netns: { type: 'string' },
    match: { type: 'string' },
    set: {
      type: 'object',
      minProperties: 1,
      additionalProperties: { type: ['string', 'integer'] },
    },
    // drop, pass, or a fault action with its argument (`duplicate 2`, `reject with host-unreachable`)
    action: { type: 'string', pattern: '^\\s*(drop|pass|duplicate|corrupt|truncate|reject|delay|reorder)(\\s|$)' },
    rule: { type: 'string' },
    // A number, or a percentage string ("5%"), checked by checkProbability; the range applies to numbers.
    probability: { type: ['number', 'string'], exclusiveMinimum: 0, maximum: 1 },
    every: { type: 'integer', minimum: 1, maximum: MAX_EVERY },
    checksum: { enum: ['fix', 'keep'] },
    after: { type: 'integer', minimum: 0, maximum: MAX_EVERY },
    first: { type: 'integer', minimum: 1, maximum: MAX_EVERY },
    'per-connection': { type: 'boolean' },
    connections: { type: 'integer', minimum: 1 }, // the maximum is checked with the memory it would lock (checkConnections)
    limit: { type: 'string' },
    for: { type: ['string', 'number'] },
    'start-after': { type: ['string', 'number'] },
    lengths: { enum: ['fix', 'keep'] },
  },
} as const;

/** The rules file's schema (exported for the build, which generates its validator: see file-validator.ts). */
export const fileSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['rules'],
  properties: {
    seed: { type: 'integer', minimum: 0, maximum: MAX_SEED },
    dev: { type: 'string' },
    hook: { enum: HOOKS },
    netns: { type: 'string' },
    checksum: { enum: ['fix', 'keep'] },
    rules: { type: 'array', minItems: 1, items: ruleSchema },
  },
} as const;

// The YAML parser and the schema validator are loaded (and the schema compiled) on the first
// rules file only: a one-line rule, the common case, starts without them.
const requireLazy = createRequire(import.meta.url);
let yamlModule: typeof YamlModule | undefined;
let fileValidator: ValidateFunction | undefined;
function yaml(): typeof YamlModule {
  return (yamlModule ??= requireLazy('yaml') as typeof YamlModule);
}
function validateFile(data: unknown): boolean {
  fileValidator ??= fileValidatorFor(fileSchema);
  return fileValidator(data) as boolean;
}
validateFile.errors = (): ErrorObject[] | null | undefined => fileValidator?.errors;

interface RuleEntry {
  name?: string;
  dev?: string;
  hook?: Hook;
  netns?: string;
  match?: string;
  set?: Record<string, string | number>;
  action?: string;
  rule?: string;
  probability?: number | string;
  every?: number;
  checksum?: 'fix' | 'keep';
  after?: number;
  first?: number;
  'per-connection'?: boolean;
  connections?: number;
  limit?: string;
  for?: string | number;
  'start-after'?: string | number;
  lengths?: 'fix' | 'keep';
}

interface FileEntry {
  seed?: number;
  dev?: string;
  hook?: Hook;
  netns?: string;
  checksum?: 'fix' | 'keep';
  rules: RuleEntry[];
}

/** Reads and checks a rules file. */
export function loadRulesFile(path: string): LoadedRules {
  return loadRulesText(readRulesBytes(path).toString('utf8'), path);
}

/** A rules file's content; `fileName` is what error messages call it. */
export function loadRulesText(text: string, fileName: string): LoadedRules {
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_FILE_BYTES) throw overLimit(`rules file ${shorten(fileName)}`, bytes, MAX_FILE_BYTES, 'bytes');
  const { LineCounter, parseDocument } = yaml();
  const lines = new LineCounter();
  const doc = deepGuard(fileName, () => parseDocument(text, { lineCounter: lines, prettyErrors: false, logLevel: 'error' }));
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0]?.line ?? lines.linePos(e.pos[0]).line;
    if (/call stack/i.test(e.message)) deepGuard(fileName, () => { throw new RangeError(e.message); });
    throw new UsageError(`${fileName}:${line}: ${shorten(e.message.split(' at line ')[0]!.split('\n')[0]!, 160)}`, { hint: 'the file is not valid YAML' });
  }
  const where = new Locator(doc, lines, fileName);
  checkAliases(doc, lines, fileName);
  let data: unknown;
  try {
    data = deepGuard(fileName, () => doc.toJS({ maxAliasCount: MAX_ALIAS_EXPANSION }));
  } catch (err) {
    // yaml's own guard: the aliases stand for more nodes than maxAliasCount.
    if (err instanceof ReferenceError && /alias count/i.test(err.message)) {
      throw new UsageError(`${fileName}: its aliases expand to more than the limit of ${MAX_ALIAS_EXPANSION} nodes (docs/limits.md)`);
    }
    // The other ReferenceErrors of yaml's toJS are aliases it cannot resolve.
    if (err instanceof ReferenceError) throw new UsageError(`${fileName}: ${shorten(err.message, 200)}`, { hint: 'the file is not valid YAML' });
    throw err;
  }
  if (data === null || data === undefined) throw new UsageError(`${fileName}: the file has no rules`, { hint: 'docs/rules.md shows the format' });
  // A bare list is the rules alone, without file-wide settings.
  const bare = Array.isArray(data);
  if (bare) data = { rules: data };
  const rules = (data as { rules?: unknown }).rules;
  if (Array.isArray(rules) && rules.length > MAX_RULES_PER_FILE) {
    throw where.error(bare ? [] : ['rules'], overLimitMessage(bare ? 'the file' : 'rules:', rules.length, MAX_RULES_PER_FILE, 'rules'));
  }
  if (!validateFile(data)) {
    const err = validateFile.errors()![0]!;
    throw where.schemaError(err, bare);
  }
  const file = data as FileEntry;
  const groups = new Map<string, RuleGroup>();
  const names = new Map<string, number>();
  file.rules.forEach((entry, index) => {
    const path: Array<string | number> = bare ? [index] : ['rules', index];
    const label = `rules[${index}]`;
    const rule = buildRule(entry, index, file, where, path, label);
    const seen = names.get(rule.name);
    if (seen !== undefined) {
      throw where.error([...path, 'name'], `${label}.name: "${rule.name}" is already the name of rules[${seen}]`, 'give every rule its own name');
    }
    names.set(rule.name, index);
    const dev = entry.dev ?? file.dev;
    const hook = entry.hook ?? file.hook;
    const netns = entry.netns ?? file.netns;
    const key = `${netns ?? ''}\u0000${dev}\u0000${hook}`;
    let group = groups.get(key);
    if (!group) {
      group = { dev: dev!, hook: hook!, rules: [] };
      if (netns !== undefined) group.netns = netns;
      groups.set(key, group);
    }
    group.rules.push(rule);
  });
  const out: LoadedRules = { groups: [...groups.values()] };
  if (file.seed !== undefined) out.seed = file.seed;
  return out;
}

/** One entry of `rules:` to a checked Rule. */
function buildRule(
  entry: RuleEntry, index: number, file: FileEntry, where: Locator, path: Array<string | number>, label: string,
): Rule {
  const hook = entry.hook ?? file.hook;
  if (hook === undefined) throw where.error(path, `${label}: no hook`, 'give hook: xdp, ingress or egress on the rule or at the top of the file');
  const dev = entry.dev ?? file.dev;
  if (dev === undefined) throw where.error(path, `${label}: no dev`, 'give dev: INTERFACE on the rule or at the top of the file');
  // Values given on the rule or at the top of the file: errors name the one that was used.
  const at = <T>(key: 'dev' | 'netns' | 'name', value: unknown, check: (v: unknown, what: string) => T): T => {
    const inRule = entry[key] !== undefined;
    try {
      return check(value, inRule ? `${label}.${key}:` : `${key}:`);
    } catch (err) {
      if (err instanceof UsageError) throw where.error(inRule ? [...path, key] : [key], err.message, err.hint);
      throw err;
    }
  };
  at('dev', dev, checkDev);
  if (entry.netns !== undefined || file.netns !== undefined) at('netns', entry.netns ?? file.netns, checkNetns);
  if (entry.name !== undefined) at('name', entry.name, checkName);

  const hasParts = entry.match !== undefined || entry.set !== undefined || entry.action !== undefined;
  if (entry.rule !== undefined && hasParts) {
    const other = entry.match !== undefined ? 'match' : entry.set !== undefined ? 'set' : 'action';
    throw where.error([...path, other], `${label}: give either rule: or match/set/action, not both`);
  }
  if (entry.rule === undefined && entry.set === undefined && entry.action === undefined) {
    throw where.error(path, `${label}: no action`, 'add set: {FIELD: VALUE}, action: drop or action: pass, or write the whole rule as rule: "MATCH => ACTION"');
  }

  const tooLong = (ruleText: string, key: string): void => {
    try {
      checkRuleLength(ruleText, 'the rule');
    } catch (err) {
      if (err instanceof UsageError) throw where.error([...path, key], `${label}: ${err.message}`);
      throw err;
    }
  };
  const text = entry.rule !== undefined ? entry.rule.replace(/[\r\n\t]/g, ' ') : '';
  let source = text;
  // Spans index the rebuilt text; each part remembers the file path its text came from.
  const parts: Array<{ start: number; path: Array<string | number> }> = [];
  let parsed: ParsedRule;
  const locate = (err: RuleError): never => {
    const part = [...parts].reverse().find((p) => p.start <= err.span.start) ?? parts[0];
    if (!part) throw err.at(where.place(path));
    throw err.at(`${where.fileName}:${where.line(part.path, err.span.start - part.start)}`);
  };
  try {
    if (entry.rule !== undefined) {
      parts.push({ start: 0, path: [...path, 'rule'] });
      tooLong(source, 'rule');
      parsed = parseRuleText(source);
    } else {
      const segments: Array<{ text: string; path: Array<string | number>; kind: 'match' | 'key' | 'value' | 'verdict' }> = [];
      const match = (entry.match ?? '').replace(/[\r\n\t]/g, ' ').trimEnd();
      if (match.trim() !== '') segments.push({ text: match, path: [...path, 'match'], kind: 'match' });
      source = match.trim() === '' ? '=> ' : `${match} => `;
      const actionText: string[] = [];
      for (const [fieldName, value] of Object.entries(entry.set ?? {})) {
        actionText.push(`set ${fieldName} = ${String(value).replace(/[\r\n\t]/g, ' ')}`);
      }
      if (entry.action !== undefined) actionText.push(entry.action.replace(/[\r\n\t]/g, ' '));
      source += actionText.join(', ');
      tooLong(source, entry.match !== undefined ? 'match' : entry.set !== undefined ? 'set' : 'action');
      // Parse each part on its own, so a value cannot run into the next action.
      let match0: ParsedRule['match'] = { kind: 'true' };
      if (match.trim() !== '') {
        parts.push({ start: 0, path: [...path, 'match'] });
        match0 = parseMatchAt(source, 0, match.length);
      }
      let offset = match.trim() === '' ? 3 : match.length + 4;
      const actions: Action[] = [];
      for (const [fieldName, value] of Object.entries(entry.set ?? {})) {
        const keyStart = offset + 4;
        parts.push({ start: offset, path: [...path, 'set', fieldName] });
        const field = fieldCatalog.get(fieldName);
        if (!field) {
          // The parser words unknown names the same way everywhere (with a "did you mean").
          parseActionsAt(source, offset, keyStart + fieldName.length + 2);
          throw new RuleError(`"${fieldName}" is not a field name`, source, { start: keyStart, end: keyStart + fieldName.length });
        }
        const valueStart = keyStart + fieldName.length + 3;
        const valueEnd = valueStart + String(value).length;
        parts.push({ start: valueStart, path: [...path, 'set', fieldName] });
        const expr = parseExprAt(source, valueStart, valueEnd);
        actions.push({ kind: 'set', field: field!, value: expr, span: { start: offset, end: valueEnd } });
        offset = valueEnd + 2;
      }
      if (entry.action !== undefined) {
        parts.push({ start: offset, path: [...path, 'action'] });
        actions.push(...parseActionsAt(source, offset, offset + entry.action.replace(/[\r\n\t]/g, ' ').length));
      }
      parsed = { match: match0, actions };
    }
    const rule: Rule = {
      name: entry.name ?? `rule-${index + 1}`,
      text: source,
      ...checkRule(parsed, source, hook),
      checksum: entry.checksum ?? file.checksum ?? 'fix',
    };
    if (entry.probability !== undefined) {
      try {
        rule.probability = checkProbability(entry.probability, 'probability');
      } catch (err) {
        if (err instanceof UsageError) throw where.error([...path, 'probability'], `${label}.probability: must be a number greater than 0 and at most 1, or a percentage, not ${shown(entry.probability)}`, err.hint);
        throw err;
      }
    }
    if (entry.every !== undefined) rule.every = entry.every;
    try {
      applyTriggers(rule, {
        after: entry.after, first: entry.first, perConnection: entry['per-connection'], connections: entry.connections,
        limit: entry.limit, for: entry.for, startAfter: entry['start-after'], lengths: entry.lengths,
      }, TRIGGER_NAMES.file);
    } catch (err) {
      if (err instanceof UsageError) throw where.error(path, `${label}.${err.message}`, err.hint);
      throw err;
    }
    return rule;
  } catch (err) {
    if (err instanceof RuleError) return locate(err);
    throw err;
  }
}

/** Finds the line of a path in the YAML document, for `rules.yaml:4:` prefixes. */
class Locator {
  constructor(private readonly doc: Document, private readonly lines: LineCounter, readonly fileName: string) {}

  /** `file:line` of the node at `path`, or of its nearest existing ancestor. */
  place(path: Array<string | number>): string {
    return `${this.fileName}:${this.line(path)}`;
  }

  /**
   * The line of the node at `path` (or of its nearest existing ancestor). With `offset`, the
   * line of that character of a `|` block's text, whose line breaks the value keeps.
   */
  line(path: Array<string | number>, offset = 0): number {
    for (let n = path.length; n >= 0; n--) {
      const node = (n === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, n), true)) as Node | null | undefined;
      if (!node || !node.range) continue;
      const first = this.lines.linePos(node.range[0]).line;
      const { isScalar, Scalar } = yaml();
      if (n === path.length && isScalar(node) && node.type === Scalar.BLOCK_LITERAL && typeof node.value === 'string') {
        // Block text starts on the line after the `|` indicator.
        return first + 1 + (node.value.slice(0, Math.max(0, offset)).match(/\n/g)?.length ?? 0);
      }
      if (isScalar(node) && node.type === Scalar.BLOCK_FOLDED) return first + 1;
      return first;
    }
    return 1;
  }

  /** The line of a key (for unknown keys), when the map at `path` has it. */
  keyLine(path: Array<string | number>, key: string): number | undefined {
    const map = path.length === 0 ? this.doc.contents : this.doc.getIn(path, true);
    const { isMap, isScalar } = yaml();
    if (!isMap(map)) return undefined;
    for (const pair of map.items) {
      const k = pair.key as Node | null;
      if (k && isScalar(k) && String(k.value) === key && k.range) return this.lines.linePos(k.range[0]).line;
    }
    return undefined;
  }

  error(path: Array<string | number>, message: string, hint?: string): UsageError {
    return new UsageError(`${this.place(path)}: ${message}`, { hint });
  }

  /** An ajv error as `rules.yaml:4: rules[0].hook: must be one of xdp, ingress, egress`. */
  schemaError(err: ErrorObject, bare: boolean): UsageError {
    const segs = err.instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    const path: Array<string | number> = segs.map((s) => (/^\d+$/.test(s) ? Number(s) : s));
    const docPath = bare && path[0] === 'rules' ? path.slice(1) : path;
    const label = path.map((s, n) => (typeof s === 'number' ? `[${s}]` : n === 0 ? shorten(s) : `.${shorten(s)}`)).join('');
    const prefix = label === '' ? '' : `${label}: `;
    const p = err.params as Record<string, unknown>;
    const isRule = path.length === 2 && path[0] === 'rules';
    switch (err.keyword) {
      case 'additionalProperties': {
        const key = String(p.additionalProperty);
        const known: readonly string[] = isRule ? RULE_KEYS : TOP_KEYS;
        const near = known.find((k) => editDistance(k, key, 2) <= 2);
        const line = this.keyLine(docPath, key) ?? this.line(docPath);
        const inRule = isRule ? 'a rule' : 'the top of the file';
        return new UsageError(`${this.fileName}:${line}: ${prefix}unknown key "${shorten(key)}"${near ? ` (did you mean ${near}?)` : ''}`, {
          hint: `keys of ${inRule}: ${known.join(', ')}`,
        });
      }
      case 'required':
        return new UsageError(`${this.place(docPath)}: ${prefix}missing "${String(p.missingProperty)}"`, {
          hint: p.missingProperty === 'rules' ? 'a rules file has a list under rules:, or is a list of rules itself' : undefined,
        });
      case 'enum':
        return new UsageError(`${this.place(docPath)}: ${prefix}must be one of ${(p.allowedValues as unknown[]).join(', ')}`);
      case 'type': {
        const t = String(p.type).replace(',', ' or ');
        const article = /^[aeiou]/.test(t) ? 'an' : 'a';
        return new UsageError(`${this.place(docPath)}: ${prefix}must be ${t === 'array' ? 'a list' : t === 'object' ? 'a mapping' : `${article} ${t}`}`);
      }
      case 'exclusiveMinimum':
      case 'maximum':
      case 'minimum': {
        const last = path[path.length - 1];
        const range = last === 'probability' ? 'a number greater than 0 and at most 1'
          : last === 'every' || last === 'first' ? `a whole number from 1 to ${MAX_EVERY}`
          : last === 'after' ? `a whole number from 0 to ${MAX_EVERY}`
          : last === 'connections' ? `a whole number from 1 to ${MAX_CONNECTIONS}`
          : last === 'seed' ? `a whole number from 0 to ${MAX_SEED}`
          : `${err.message}`;
        return new UsageError(`${this.place(docPath)}: ${prefix}must be ${range}`);
      }
      case 'pattern':
        return new UsageError(`${this.place(docPath)}: ${prefix}must be one of drop, pass, duplicate [N], corrupt [BITS], truncate LEN, delay DURATION, reorder [by N], reject [with CODE]`);
      case 'minItems':
        return new UsageError(`${this.place(docPath)}: ${prefix}the list is empty`, { hint: 'give at least one rule' });
      case 'minProperties':
        return new UsageError(`${this.place(docPath)}: ${prefix}is empty`, { hint: 'list FIELD: VALUE pairs, e.g. ip.ttl: 1' });
      default:
        return new UsageError(`${this.place(docPath)}: ${prefix}${err.message ?? 'is not valid'}`);
    }
  }
}
