/**
 * The JSON schemas of the service: fastify validates every body and parameter with them (ajv,
 * unknown fields refused, no type coercion) and @fastify/swagger builds /openapi.json from the
 * same objects, so the document cannot drift from what the routes accept.
 */
import type { ServiceCounters } from './attacher.js';

/** Fault names: what a URL path segment and a Prometheus label value carry without escaping. */
export const FAULT_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$';

/** Most rules in one fault: one program per fault, and the verifier's budget is shared. */
export const MAX_RULES = 64;

const duration = { type: 'string', pattern: '^(\\d+(\\.\\d+)?(ms|s|m|h))+$', examples: ['500ms', '30s', '1m30s'] } as const;

/** The trigger options of a fault: those of `netmangle run` for a one-line rule, applied to each of its rules. */
const triggerProperties = {
  probability: {
    description: 'act on a matching packet with this probability, 0 < p ≤ 1 (0.05 or "5%")',
    anyOf: [{ type: 'number', exclusiveMinimum: 0, maximum: 1 }, { type: 'string', pattern: '^\\d+(\\.\\d+)?%$' }],
  },
  every: { description: 'act on the Nth, 2Nth … matching packet', type: 'integer', minimum: 1 },
  first: { description: 'act on the first N matching packets (of those after and every let through)', type: 'integer', minimum: 1 },
  after: { description: 'skip the first N matching packets', type: 'integer', minimum: 0 },
  perConnection: { description: 'keep the counts of first, after and every per connection (both directions as one)', type: 'boolean' },
  connections: { description: 'connections perConnection remembers (LRU; default 65536)', type: 'integer', minimum: 1 },
  limit: { description: 'act on at most this many packets: 100/s, 6000/min, 10/h', type: 'string', examples: ['100/s'] },
  startAfter: { ...duration, description: "act only this long after the rule's first matching packet" },
  for: { ...duration, description: "stop acting this long after the rule's first matching packet (kept by the program)" },
  checksum: { description: 'fix (default) or keep: leave checksums stale on purpose', type: 'string', enum: ['fix', 'keep'] },
  lengths: { description: 'fix (default) or keep: whether truncate shrinks the IP and UDP length fields', type: 'string', enum: ['fix', 'keep'] },
} as const;

export const TRIGGER_FIELDS = Object.keys(triggerProperties) as Array<keyof typeof triggerProperties>;

const rules = {
  description: "one rule 'MATCH => ACTION[, ACTION]…' or several (one program, the rules in order)",
  anyOf: [
    { type: 'string', minLength: 1 },
    { type: 'array', minItems: 1, maxItems: MAX_RULES, items: { type: 'string', minLength: 1 } },
  ],
  examples: ['tcp.flags.push == 1 => drop'],
} as const;

const ttl = {
  description: 'a lease: the fault detaches this long after it is created or renewed (seconds, or a duration like "30s")',
  anyOf: [{ type: 'number', exclusiveMinimum: 0, maximum: 31_536_000 }, duration],
} as const;

const seed = { description: 'seed of the random decisions (default: chosen, and given back)', type: 'integer', minimum: 0, maximum: 4294967295 } as const;
const dev = { description: 'interface name, as `ip link` shows it in netns', type: 'string', minLength: 1, maxLength: 15 } as const;
const hook = { type: 'string', enum: ['xdp', 'ingress', 'egress'] } as const;
const netns = { description: 'an `ip netns` name, or a path: /proc/PID/ns/net, /run/netns/X', type: 'string', minLength: 1, maxLength: 4096 } as const;

export const faultSpecSchema = {
  $id: 'FaultSpec',
  type: 'object',
  description: 'a named rule set bound to an interface hook, with its triggers and an optional lease',
  additionalProperties: false,
  required: ['name', 'rules', 'dev', 'hook'],
  properties: {
    name: { type: 'string', pattern: FAULT_NAME_PATTERN, examples: ['ooo-first-segment'] },
    rules,
    dev,
    hook,
    netns,
    ...triggerProperties,
    seed,
    ttl,
  },
} as const;

/** PATCH: any of the rules, triggers, seed and ttl; null removes a trigger or the lease. */
export const faultPatchSchema = {
  $id: 'FaultPatch',
  type: 'object',
  description: 'what to change; null removes a trigger or the lease. dev, hook and netns may be given only unchanged',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    rules,
    dev,
    hook,
    netns,
    ...Object.fromEntries(Object.entries(triggerProperties).map(([k, v]) => [k, { anyOf: [v, { type: 'null' }] }])),
    seed: { anyOf: [seed, { type: 'null' }] },
    ttl: { anyOf: [ttl, { type: 'null' }] },
  },
} as const;

export const renewSchema = {
  $id: 'Renew',
  type: 'object',
  additionalProperties: false,
  properties: { ttl },
} as const;

export const populateSchema = {
  $id: 'Populate',
  description: 'the faults to have; each one already there with the same spec is left attached as it is',
  type: 'array',
  maxItems: 1024,
  items: { $ref: 'FaultSpec#' },
} as const;

const counter = { type: 'integer', minimum: 0 } as const;

export const ruleCountersSchema = {
  $id: 'RuleCounters',
  type: 'object',
  required: ['name', 'text', 'dev', 'hook', 'matched', 'acted', 'dropped', 'held'],
  properties: {
    name: { type: 'string', description: "the rule's name (rule-1, rule-2 …)" },
    text: { type: 'string' },
    dev: { type: 'string' },
    hook,
    netns: { type: 'string' },
    matched: { ...counter, description: 'packets that matched the rule' },
    acted: { ...counter, description: 'times the actions ran (matching packets the triggers let through)' },
    dropped: { ...counter, description: 'packets the rule dropped' },
    held: { ...counter, description: "packets the fault's delay line holds now, for a rule that delays or reorders (0 for others)" },
  },
} as const;

const delayLineStat = (description: string) => ({ ...counter, description });

export const countersSchema = {
  $id: 'Counters',
  type: 'object',
  required: ['rules', 'delayLines', 'gsoPackets'],
  properties: {
    rules: { type: 'array', items: { $ref: 'RuleCounters#' } },
    delayLines: {
      type: 'array',
      description: 'the delay line of the fault, if a rule delays or reorders',
      items: {
        type: 'object',
        properties: {
          dev: { type: 'string' }, hook, netns: { type: 'string' },
          held: delayLineStat('packets held now'), heldBytes: delayLineStat('bytes held now'), peakHeld: delayLineStat('most packets held at once'),
          delayed: delayLineStat('packets taken in by delay'), reordered: delayLineStat('packets taken in by reorder'),
          overtaken: delayLineStat('reordered packets sent on after enough later ones went by'), timedOut: delayLineStat('reordered packets sent on by their timeout'),
          followers: delayLineStat('packets of a held connection sent on at once'), overLimit: delayLineStat('packets not held because the line was full'),
          received: delayLineStat('frames read from the TAP'), sent: delayLineStat('frames written back'),
          failed: delayLineStat('frames the write back failed for'), lost: delayLineStat('frames the TAP dropped before the line read them'),
        },
      },
    },
    gsoPackets: { ...counter, description: 'GSO super-packets the program saw (tc egress of local TCP)' },
  },
} as const;

export const faultSchema = {
  $id: 'Fault',
  type: 'object',
  required: ['name', 'rules', 'dev', 'hook', 'seed', 'path', 'programs', 'createdAt'],
  properties: {
    name: { type: 'string' },
    rules: { type: 'array', items: { type: 'string' } },
    dev: { type: 'string' },
    hook,
    netns: { type: 'string' },
    ...triggerProperties,
    seed: { type: 'integer' },
    ttl: { type: 'number', description: 'the lease in seconds' },
    expiresAt: { type: 'string', format: 'date-time', description: 'when the fault detaches unless renewed' },
    path: { type: 'string', enum: ['tcx', 'link', 'netlink'], description: 'how the program is attached: tcx or XDP link (detached by the kernel if the service dies), or netlink' },
    programs: { type: 'array', items: { type: 'integer' }, description: 'kernel ids of the attached programs' },
    createdAt: { type: 'string', format: 'date-time' },
    warning: { type: 'string' },
    counters: { $ref: 'Counters#' },
  },
} as const;

export const errorSchema = {
  $id: 'Error',
  type: 'object',
  required: ['error'],
  properties: {
    error: { type: 'string', description: 'the one-line message the CLI prints for the same mistake' },
    hint: { type: 'string', description: 'what to do about it' },
    at: {
      type: 'object',
      properties: {
        field: { type: 'string', description: 'the body field at fault: rules[0], probability, [2].hook (populate)' },
        column: { type: 'integer', description: 'in a rule: the column (1-based) where the error is' },
      },
    },
  },
} as const;

export const patchResultSchema = {
  $id: 'PatchResult',
  type: 'object',
  required: ['fault', 'replaced'],
  properties: {
    fault: { $ref: 'Fault#' },
    replaced: {
      type: 'string',
      enum: ['atomically', 'detach-attach', 'unchanged'],
      description: 'atomically: the new program took the old one\'s place on the hook in one step (BPF_LINK_UPDATE); detach-attach: the old one was detached, then the new one attached (packets in between met neither); unchanged: only the lease changed',
    },
  },
} as const;

export const populateResultSchema = {
  $id: 'PopulateResult',
  type: 'object',
  required: ['created', 'replaced', 'unchanged', 'faults'],
  properties: {
    created: { type: 'array', items: { type: 'string' } },
    replaced: { type: 'array', items: { type: 'string' } },
    unchanged: { type: 'array', items: { type: 'string' } },
    faults: { type: 'array', items: { $ref: 'Fault#' } },
  },
} as const;

export const versionSchema = {
  $id: 'Version',
  type: 'object',
  required: ['version', 'api', 'pid', 'kernel', 'node', 'paths'],
  properties: {
    version: { type: 'string' },
    api: { type: 'integer', description: 'the API\'s version: 1' },
    pid: { type: 'integer', description: 'the service\'s process id' },
    kernel: { type: 'string' },
    node: { type: 'string' },
    paths: {
      type: 'object',
      description: 'the attach path this kernel gives each hook',
      properties: { xdp: { type: 'string' }, ingress: { type: 'string' }, egress: { type: 'string' } },
    },
  },
} as const;

export const nameParams = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', pattern: FAULT_NAME_PATTERN } },
} as const;

export const sharedSchemas = [faultSpecSchema, faultPatchSchema, renewSchema, populateSchema, ruleCountersSchema, countersSchema, faultSchema, errorSchema, patchResultSchema, populateResultSchema, versionSchema];

// ------------------------------------------------------------------ the same shapes in TypeScript

export type Hook = 'xdp' | 'ingress' | 'egress';

export interface TriggerFields {
  probability?: number | string;
  every?: number;
  first?: number;
  after?: number;
  perConnection?: boolean;
  connections?: number;
  limit?: string;
  startAfter?: string;
  for?: string;
  checksum?: 'fix' | 'keep';
  lengths?: 'fix' | 'keep';
}

export interface FaultSpec extends TriggerFields {
  name: string;
  rules: string | string[];
  dev: string;
  hook: Hook;
  netns?: string;
  seed?: number;
  ttl?: number | string;
}

export type FaultPatch = { [K in keyof Omit<FaultSpec, 'name'>]?: FaultSpec[K] | null };

export interface FaultJson extends TriggerFields {
  name: string;
  rules: string[];
  dev: string;
  hook: Hook;
  netns?: string;
  seed: number;
  ttl?: number;
  expiresAt?: string;
  path: 'tcx' | 'link' | 'netlink';
  programs: number[];
  createdAt: string;
  warning?: string;
  counters?: ServiceCounters;
}

export type Replaced = 'atomically' | 'detach-attach' | 'unchanged';
