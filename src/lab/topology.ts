/**
 * Lab topology files: parsing (YAML, with line numbers), validation (a JSON schema through ajv,
 * then the checks a schema cannot express) and resolution into a plan: which namespaces,
 * which veth pairs with which names, MTUs, offloads, addresses and routes.
 *
 * A topology, as YAML:
 *
 *     name: lab                 # optional; `--name` wins
 *     switch: sw                # optional: a Linux bridge in its own namespace
 *     hosts:
 *       h1: {}
 *       h2: { gso_max_segs: 1 }
 *     links:                    # optional with a switch: every host joins the switch
 *       - { a: h1, b: sw, mtu: 1500 }
 *       - a: { host: h2, tx_checksum: off }
 *         b: sw
 *
 * Addresses come from 198.18.0.0/15 and 2001:db8::/32 unless an end lists its own: the switch
 * is segment 0, each direct host-to-host link the next segment; segment k is 198.18.k.0/24 and
 * 2001:db8:0:k::/64, and the i-th member of a segment gets .i and ::i.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { basename } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { LineCounter, parseDocument, isNode, type Document } from 'yaml';
import { fsUsageError, UsageError } from '../errors.js';

/** A topology as written (YAML or a plain object), before validation. */
export interface TopologySpec {
  name?: string;
  switch?: string;
  hosts: Record<string, HostSpec | null>;
  links?: LinkSpec[];
}

export interface HostSpec {
  /** Applied to every interface of the host (`ip link set … gso_max_segs N`). */
  gso_max_segs?: number;
  /** Extra routes; routes between the lab's own subnets are added without asking. */
  routes?: Array<{ to: string; via: string }>;
  /** Forward packets between interfaces; on by default for a host on more than one segment. */
  forwarding?: boolean;
}

export type OnOff = boolean | 'on' | 'off';

export interface EndSpec {
  host: string;
  /** Interface name in that namespace (default eth0, eth1 … on hosts; the host's name on the switch). */
  dev?: string;
  mtu?: number;
  tx_checksum?: OnOff;
  rx_checksum?: OnOff;
  /** CIDR addresses for this end, replacing the automatic ones ([] for none). */
  addresses?: string[];
}

export interface LinkSpec {
  a: string | EndSpec;
  b: string | EndSpec;
  /** Defaults for both ends. */
  mtu?: number;
  tx_checksum?: OnOff;
  rx_checksum?: OnOff;
}

/** One end of a veth pair, resolved. */
export interface PlannedEnd {
  /** Host (or switch) name. */
  node: string;
  dev: string;
  mtu?: number;
  txChecksum?: boolean;
  rxChecksum?: boolean;
  /** CIDR strings, e.g. '198.18.0.1/24'. */
  addresses: string[];
}

export interface PlannedLink {
  a: PlannedEnd;
  b: PlannedEnd;
}

export interface PlannedRoute {
  to: string;
  via: string;
}

export interface PlannedHost {
  name: string;
  gsoMaxSegs?: number;
  forwarding: boolean;
  routes: PlannedRoute[];
}

/** Everything needed to build (and describe) a lab, independent of the lab's name. */
export interface TopologyPlan {
  /** The `name:` of the file, if it had one. */
  name?: string;
  hosts: PlannedHost[];
  /** The switch's name (also the bridge's name inside its namespace). */
  switch?: string;
  links: PlannedLink[];
}

export const NAME_PATTERN = '^[a-z][a-z0-9_]{0,11}$';
export const LAB_NAME_PATTERN = '^[a-z0-9][a-z0-9_-]{0,31}$';
const DEV_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$';

const onOff = { anyOf: [{ type: 'boolean' }, { enum: ['on', 'off'] }] };
const mtu = { type: 'integer', minimum: 68, maximum: 65535 };
const cidr = { type: 'string', minLength: 1 };

const endSchema = {
  type: 'object',
  required: ['host'],
  additionalProperties: false,
  properties: {
    host: { type: 'string' },
    dev: { type: 'string', pattern: DEV_PATTERN },
    mtu,
    tx_checksum: onOff,
    rx_checksum: onOff,
    addresses: { type: 'array', items: cidr },
  },
};

const topologySchema = {
  type: 'object',
  required: ['hosts'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', pattern: LAB_NAME_PATTERN },
    switch: { type: 'string', pattern: NAME_PATTERN },
    hosts: {
      type: 'object',
      minProperties: 1,
      propertyNames: { pattern: NAME_PATTERN },
      additionalProperties: {
        anyOf: [
          { type: 'null' },
          {
            type: 'object',
            additionalProperties: false,
            properties: {
              gso_max_segs: { type: 'integer', minimum: 1, maximum: 65535 },
              forwarding: { type: 'boolean' },
              routes: {
                type: 'array',
                items: {
                  type: 'object',
                  required: ['to', 'via'],
                  additionalProperties: false,
                  properties: { to: { type: 'string' }, via: { type: 'string' } },
                },
              },
            },
          },
        ],
      },
    },
    links: {
      type: 'array',
      items: {
        type: 'object',
        required: ['a', 'b'],
        additionalProperties: false,
        properties: {
          a: { anyOf: [{ type: 'string' }, endSchema] },
          b: { anyOf: [{ type: 'string' }, endSchema] },
          mtu,
          tx_checksum: onOff,
          rx_checksum: onOff,
        },
      },
    },
  },
};

// verbose: errors carry their schema, so an unknown key can be answered with the allowed ones.
// Compiled on the first topology, not at import: `netmangle --help` loads this module too.
let topologyValidator: ValidateFunction | undefined;
function validateSchema(value: unknown): boolean {
  topologyValidator ??= new Ajv({ allErrors: true, strict: false, verbose: true }).compile(topologySchema);
  return topologyValidator(value) as boolean;
}

/** The built-in default: h1 ── sw ── h2. */
export const DEFAULT_TOPOLOGY: TopologySpec = {
  switch: 'sw',
  hosts: { h1: {}, h2: {} },
  links: [
    { a: 'h1', b: 'sw' },
    { a: 'h2', b: 'sw' },
  ],
};

/** A topology file that failed to parse or validate; each problem names its line. */
export class TopologyError extends UsageError {
  readonly problems: string[];
  constructor(problems: string[]) {
    const rest = problems.slice(1);
    super(problems[0] ?? 'invalid topology', {
      hint: rest.length === 0 ? undefined : `also: ${rest.slice(0, 4).join('; ')}${rest.length > 4 ? `; and ${rest.length - 4} more` : ''}`,
    });
    this.problems = problems;
  }
}

type PathKey = string | number;

/** Finds where a value sits: `file:line` when we have the YAML, the file label otherwise. */
class Locator {
  constructor(
    private readonly source: string,
    private readonly doc?: Document,
    private readonly lines?: LineCounter,
  ) {}

  where(path: PathKey[], key = false): string {
    if (!this.doc || !this.lines) return this.source;
    // Walk as deep as the document goes; a missing property is reported at its parent.
    for (let n = path.length; n >= 0; n -= 1) {
      const sub = path.slice(0, n);
      const node = sub.length === 0 ? this.doc.contents : this.doc.getIn(sub, true);
      if (isNode(node) && node.range) {
        let offset = node.range[0];
        if (key && n === path.length && sub.length > 0) offset = this.keyOffset(sub) ?? offset;
        return `${this.source}:${this.lines.linePos(offset).line}`;
      }
    }
    return this.source;
  }

  /** The offset of a mapping key, for problems with the key itself (a bad host name). */
  private keyOffset(path: PathKey[]): number | undefined {
    const parent = path.length === 1 ? this.doc!.contents : this.doc!.getIn(path.slice(0, -1), true);
    const items = (parent as { items?: Array<{ key?: unknown }> } | null)?.items;
    const last = path[path.length - 1];
    for (const pair of items ?? []) {
      const k = pair.key as { value?: unknown; range?: [number, number, number] } | undefined;
      if (k && k.value === last && k.range) return k.range[0];
    }
    return undefined;
  }
}

function formatPath(path: PathKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? p : `.${p}`;
  }
  return out || '(top level)';
}

function decodePointer(pointer: string): PathKey[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

/** The value at a path of the checked object. */
function valueAt(root: unknown, path: PathKey[]): unknown {
  let v: unknown = root;
  for (const k of path) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k as string] : undefined;
  return v;
}

function isUnder(path: string, parent: string): boolean {
  return path === parent || path.startsWith(`${parent}/`);
}

/**
 * Turns ajv's errors into one readable problem per place. Where a value may take one of
 * several shapes (anyOf), a mapping is judged by the mapping shape's own errors (an unknown
 * key, a wrong field), anything else by one summary of the shapes allowed.
 */
function schemaProblems(errors: ErrorObject[], loc: Locator, data: unknown): string[] {
  let kept = errors.filter((e) => (e as { propertyName?: string }).propertyName === undefined || e.keyword === 'propertyNames');
  for (const any of errors.filter((e) => e.keyword === 'anyOf')) {
    const at = any.instancePath;
    const value = valueAt(data, decodePointer(at));
    const isMapping = value !== null && typeof value === 'object' && !Array.isArray(value);
    kept = kept.filter((e) => {
      if (e === any) return !isMapping;
      if (!isUnder(e.instancePath, at)) return true;
      if (!isMapping) return false;
      // The other shapes' complaints about the value itself ("must be null", "must be string").
      return !(e.instancePath === at && (e.keyword === 'type' || e.keyword === 'enum'));
    });
  }
  const byPlace = new Map<string, string>();
  for (const e of kept) {
    let path = decodePointer(e.instancePath);
    let message: string;
    let atKey = false;
    switch (e.keyword) {
      case 'additionalProperties': {
        const key = String((e.params as { additionalProperty: string }).additionalProperty);
        const parentSchema = e.parentSchema as { properties?: Record<string, unknown> } | undefined;
        const allowed = Object.keys(parentSchema?.properties ?? {});
        path = [...path, key];
        atKey = true;
        message = `unknown key "${key}"${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ''}`;
        break;
      }
      case 'required':
        message = `missing "${(e.params as { missingProperty: string }).missingProperty}"`;
        break;
      case 'propertyNames': {
        const name = String((e.params as { propertyName: string }).propertyName);
        path = [...path, name];
        atKey = true;
        message = `bad host name "${name}": use a lowercase letter then up to 11 lowercase letters, digits or _`;
        break;
      }
      case 'pattern': {
        const key = path[path.length - 1];
        if (key === 'name') message = 'bad lab name: lowercase letters, digits, _ and -, at most 32, starting with a letter or digit';
        else if (key === 'switch') message = 'bad switch name: a lowercase letter then up to 11 lowercase letters, digits or _';
        else if (key === 'dev') message = 'bad interface name: at most 15 letters, digits, _ . -';
        else message = `does not match ${String((e.params as { pattern: string }).pattern)}`;
        break;
      }
      case 'anyOf':
        message = describeAnyOf(path);
        break;
      case 'minimum':
      case 'maximum':
        message = `must be between ${describeRange(path)}`;
        break;
      case 'type':
        message = `must be ${describeType(e, path)}`;
        break;
      case 'enum':
        message = 'must be on or off';
        break;
      case 'minProperties':
        message = 'needs at least one host';
        break;
      default:
        message = e.message ?? 'invalid';
    }
    const place = `${loc.where(path, atKey)}: ${formatPath(path)}`;
    if (!byPlace.has(place)) byPlace.set(place, `${place}: ${message}`);
  }
  return [...byPlace.values()];
}

function describeAnyOf(path: PathKey[]): string {
  const key = path[path.length - 1];
  if (key === 'a' || key === 'b') return 'must be a host name or { host, dev, mtu, tx_checksum, rx_checksum, addresses }';
  if (key === 'tx_checksum' || key === 'rx_checksum') return 'must be on or off';
  if (path[0] === 'hosts') return 'must be a mapping of host options (gso_max_segs, routes, forwarding) or empty';
  return 'has the wrong shape';
}

function describeRange(path: PathKey[]): string {
  const key = path[path.length - 1];
  if (key === 'mtu') return '68 and 65535';
  if (key === 'gso_max_segs') return '1 and 65535';
  return 'the allowed bounds';
}

function describeType(e: ErrorObject, path: PathKey[]): string {
  const t = String((e.params as { type: string }).type);
  if (t === 'object' && path.length === 0) return 'a mapping with hosts (and optionally switch, links, name)';
  if (t === 'object') return 'a mapping';
  if (t === 'array') return 'a list';
  if (t === 'integer') return 'a whole number';
  return `a ${t}`;
}

/** Parses and validates topology YAML text. `source` labels errors (usually the file name). */
export function parseTopology(text: string, source = 'topology'): TopologyPlan {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new TopologyError(
      doc.errors.map((e) => {
        const line = e.linePos?.[0]?.line ?? lines.linePos(e.pos[0]).line;
        return `${source}:${line}: YAML syntax: ${e.message.split('\n')[0]}`;
      }),
    );
  }
  const value: unknown = doc.toJS();
  return resolveTopology(value, new Locator(source, doc, lines));
}

/** Reads, parses and validates a topology file. */
export function loadTopology(file: string): TopologyPlan {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = fsUsageError(err, `read topology file ${file}`);
    if (e instanceof UsageError && (err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UsageError(e.message, { hint: 'run `netmangle lab up` with no file for the built-in h1 ── sw ── h2', cause: err });
    }
    throw e;
  }
  return parseTopology(text, basename(file));
}

/** Validates a topology given as an object (the library API). */
export function validateTopology(spec: unknown, source = 'topology'): TopologyPlan {
  return resolveTopology(spec, new Locator(source));
}

function asBool(v: OnOff | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  return v === true || v === 'on';
}

function resolveTopology(value: unknown, loc: Locator): TopologyPlan {
  if (value === null || value === undefined) throw new TopologyError([`${loc.where([])}: the topology is empty (it needs at least hosts:)`]);
  if (!validateSchema(value)) throw new TopologyError(schemaProblems(topologyValidator!.errors ?? [], loc, value));
  const spec = value as unknown as TopologySpec;
  const problems: string[] = [];
  const at = (path: PathKey[], msg: string, key = false) => problems.push(`${loc.where(path, key)}: ${formatPath(path)}: ${msg}`);

  const hostNames = Object.keys(spec.hosts);
  const sw = spec.switch;
  if (sw !== undefined && hostNames.includes(sw)) {
    at(['switch'], `"${sw}" is also a host name; a switch needs a name of its own`);
    throw new TopologyError(problems);
  }
  const known = (n: string) => hostNames.includes(n) || n === sw;
  const knownList = () => `hosts are ${hostNames.join(', ')}${sw ? `; the switch is ${sw}` : ''}`;

  let linkSpecs = spec.links;
  if (linkSpecs === undefined) {
    if (sw !== undefined) linkSpecs = hostNames.map((h) => ({ a: h, b: sw }));
    else if (hostNames.length > 1) at(['hosts'], 'several hosts but no switch and no links: add `switch: sw` or a links: list');
    else linkSpecs = [];
  }
  linkSpecs ??= [];

  // Normalise ends.
  const ends: Array<[EndSpec, EndSpec, LinkSpec]> = [];
  linkSpecs.forEach((l, i) => {
    const norm = (e: string | EndSpec, side: 'a' | 'b'): EndSpec | undefined => {
      const end: EndSpec = typeof e === 'string' ? { host: e } : { ...e };
      const path: PathKey[] = typeof e === 'string' ? ['links', i, side] : ['links', i, side, 'host'];
      if (!known(end.host)) {
        at(path, `unknown host "${end.host}" (${knownList()})`);
        return undefined;
      }
      end.mtu ??= l.mtu;
      end.tx_checksum ??= l.tx_checksum;
      end.rx_checksum ??= l.rx_checksum;
      return end;
    };
    const a = norm(l.a, 'a');
    const b = norm(l.b, 'b');
    if (!a || !b) return;
    if (a.host === b.host) at(['links', i], `links "${a.host}" to itself`);
    else if (sw !== undefined && a.host === sw && b.host === sw) at(['links', i], 'links the switch to itself');
    else ends.push([a, b, l]);
  });

  // Interface names.
  const devsOf = new Map<string, Set<string>>();
  const nextEth = new Map<string, number>();
  const switchLinksOf = new Map<string, number>();
  for (const [a, b] of ends) {
    for (const [end, other] of [[a, b], [b, a]] as const) {
      if (end.host !== sw && other.host === sw) switchLinksOf.set(end.host, (switchLinksOf.get(end.host) ?? 0) + 1);
    }
  }
  const switchPortIndex = new Map<string, number>();
  const links: PlannedLink[] = [];
  ends.forEach(([a, b], i) => {
    const plan = (end: EndSpec, other: EndSpec, side: 'a' | 'b'): PlannedEnd => {
      let dev = end.dev;
      if (dev === undefined) {
        if (end.host === sw) {
          const n = (switchPortIndex.get(other.host) ?? 0) + 1;
          switchPortIndex.set(other.host, n);
          dev = (switchLinksOf.get(other.host) ?? 0) > 1 ? `${other.host}-${n}` : other.host;
        } else {
          let n = nextEth.get(end.host) ?? 0;
          const used = devsOf.get(end.host);
          while (used?.has(`eth${n}`)) n += 1;
          dev = `eth${n}`;
          nextEth.set(end.host, n + 1);
        }
      }
      const set = devsOf.get(end.host) ?? new Set<string>();
      if (dev === 'lo' || set.has(dev) || (end.host === sw && dev === sw)) {
        at(['links', i, side], `interface name "${dev}" is already used in ${end.host}`);
      }
      set.add(dev);
      devsOf.set(end.host, set);
      return {
        node: end.host,
        dev,
        mtu: end.mtu,
        txChecksum: asBool(end.tx_checksum),
        rxChecksum: asBool(end.rx_checksum),
        addresses: [],
      };
    };
    links.push({ a: plan(a, b, 'a'), b: plan(b, a, 'b') });
  });
  if (problems.length > 0) throw new TopologyError(problems);

  // Segments: the switch (0) then each direct link; members in link order.
  interface Segment {
    index: number;
    members: PlannedEnd[];
  }
  const segments: Segment[] = [];
  const switchSegment: Segment | undefined = sw !== undefined ? { index: 0, members: [] } : undefined;
  if (switchSegment) segments.push(switchSegment);
  const segmentOf = new Map<PlannedEnd, Segment>();
  for (const l of links) {
    if (l.a.node === sw || l.b.node === sw) {
      const hostEnd = l.a.node === sw ? l.b : l.a;
      switchSegment!.members.push(hostEnd);
      segmentOf.set(hostEnd, switchSegment!);
    } else {
      const seg: Segment = { index: segments.length, members: [l.a, l.b] };
      segments.push(seg);
      segmentOf.set(l.a, seg);
      segmentOf.set(l.b, seg);
    }
  }
  if (segments.length > 256) throw new TopologyError([`${loc.where(['links'])}: links: too many segments for automatic addresses (at most 256)`]);

  // Addresses: explicit ones first, automatic ones skip anything taken.
  const taken = new Map<string, string>();
  const endPath = new Map<PlannedEnd, PathKey[]>();
  links.forEach((l, i) => {
    endPath.set(l.a, ['links', i, 'a']);
    endPath.set(l.b, ['links', i, 'b']);
  });
  const explicit = new Map<PlannedEnd, string[]>();
  ends.forEach(([a, b], i) => {
    for (const [end, planned, side] of [[a, links[i]!.a, 'a'], [b, links[i]!.b, 'b']] as const) {
      if (end.addresses === undefined) continue;
      if (end.host === sw) {
        at(['links', i, side, 'addresses'], 'the switch has no addresses (it is a bridge); put them on hosts');
        continue;
      }
      end.addresses.forEach((addr, j) => {
        const check = checkCidr(addr);
        if (check) return at(['links', i, side, 'addresses', j], check);
        const ip = addr.split('/')[0]!.toLowerCase();
        if (taken.has(ip)) return at(['links', i, side, 'addresses', j], `address ${ip} is already used by ${taken.get(ip)}`);
        taken.set(ip, `${end.host} ${planned.dev}`);
      });
      explicit.set(planned, end.addresses);
    }
  });
  for (const seg of segments) {
    let next = 1;
    for (const member of seg.members) {
      const given = explicit.get(member);
      if (given) {
        member.addresses = [...given];
        continue;
      }
      while (taken.has(v4(seg.index, next)) || taken.has(v6(seg.index, next))) next += 1;
      if (next > 254) {
        at(endPath.get(member)!, 'too many hosts on one segment for automatic addresses');
        break;
      }
      member.addresses = [`${v4(seg.index, next)}/24`, `${v6(seg.index, next)}/64`];
      taken.set(v4(seg.index, next), member.node);
      taken.set(v6(seg.index, next), member.node);
      next += 1;
    }
  }

  // The kernel refuses IPv6 on an interface with an MTU below 1280.
  for (const [l, i] of links.map((l, i) => [l, i] as const)) {
    for (const [end, side] of [[l.a, 'a'], [l.b, 'b']] as const) {
      if (end.mtu !== undefined && end.mtu < 1280 && end.addresses.some((c) => c.includes(':'))) {
        at(['links', i, side], `MTU ${end.mtu} is below 1280, the least IPv6 allows; raise it or give this end IPv4 addresses only (addresses: [...])`);
      }
    }
  }
  if (problems.length > 0) throw new TopologyError(problems);

  // Hosts, forwarding and routes.
  const hosts: PlannedHost[] = hostNames.map((name) => {
    const h = spec.hosts[name] ?? {};
    const segs = new Set(links.flatMap((l) => [l.a, l.b]).filter((e) => e.node === name).map((e) => segmentOf.get(e)));
    const routes: PlannedRoute[] = [];
    (h.routes ?? []).forEach((r, j) => {
      if (r.to !== 'default' && checkCidr(r.to)) at(['hosts', name, 'routes', j, 'to'], `${checkCidr(r.to)} (or "default")`);
      if (isIP(r.via) === 0) at(['hosts', name, 'routes', j, 'via'], `"${r.via}" is not an IP address`);
      routes.push({ to: r.to, via: r.via });
    });
    return { name, gsoMaxSegs: h.gso_max_segs, forwarding: h.forwarding ?? segs.size > 1, routes };
  });
  if (problems.length > 0) throw new TopologyError(problems);
  addAutomaticRoutes(hosts, segments, segmentOf, links);

  return { name: spec.name, hosts, switch: sw, links };
}

function v4(segment: number, i: number): string {
  return `198.18.${segment}.${i}`;
}
function v6(segment: number, i: number): string {
  return segment === 0 ? `2001:db8::${i.toString(16)}` : `2001:db8:0:${segment.toString(16)}::${i.toString(16)}`;
}

function checkCidr(s: string): string | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(s);
  if (!m) return `"${s}" is not an address with a prefix length (like 198.18.0.1/24 or 2001:db8::1/64)`;
  const fam = isIP(m[1]!);
  if (fam === 0) return `"${m[1]}" is not an IP address`;
  const len = Number(m[2]);
  if (len > (fam === 4 ? 32 : 128)) return `prefix length /${len} is too long for IPv${fam}`;
  return undefined;
}

function networkOf(cidr: string): string | undefined {
  const [ip, lenText] = cidr.split('/') as [string, string];
  const len = Number(lenText);
  if (isIP(ip) === 4) {
    const n = ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
    const mask = len === 0 ? 0 : 2 ** 32 - 2 ** (32 - len);
    const net = (n & mask) >>> 0;
    return `${[24, 16, 8, 0].map((s) => (net >>> s) & 255).join('.')}/${len}`;
  }
  if (isIP(ip) === 6) {
    const big = ipv6ToBigInt(ip);
    const mask = len === 0 ? 0n : ((1n << 128n) - 1n) ^ ((1n << BigInt(128 - len)) - 1n);
    return `${bigIntToIpv6(big & mask)}/${len}`;
  }
  return undefined;
}

function ipv6ToBigInt(ip: string): bigint {
  const [head, tail] = ip.includes('::') ? (ip.split('::') as [string, string]) : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function bigIntToIpv6(n: bigint): string {
  const groups: string[] = [];
  for (let i = 7; i >= 0; i -= 1) groups.push(((n >> BigInt(i * 16)) & 0xffffn).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

/**
 * Routes "where needed": for every host and every lab subnet it is not on, a route via the
 * first hop of the shortest path (hosts on several segments forward), per address family.
 */
function addAutomaticRoutes(
  hosts: PlannedHost[],
  segments: Array<{ index: number; members: PlannedEnd[] }>,
  segmentOf: Map<PlannedEnd, { index: number; members: PlannedEnd[] }>,
  links: PlannedLink[],
): void {
  const endsOf = (host: string) => links.flatMap((l) => [l.a, l.b]).filter((e) => e.node === host && segmentOf.has(e));
  const isRouter = new Map(hosts.map((h) => [h.name, h.forwarding]));
  for (const family of [4, 6] as const) {
    const subnetOf = new Map<{ index: number }, string>();
    for (const seg of segments) {
      for (const m of seg.members) {
        const a = m.addresses.find((c) => isIP(c.split('/')[0]!) === family);
        if (a && !subnetOf.has(seg)) subnetOf.set(seg, networkOf(a)!);
      }
    }
    for (const host of hosts) {
      // Breadth-first search over segments; remember the first-hop gateway address.
      const start = endsOf(host.name).map((e) => segmentOf.get(e)!);
      const seen = new Set(start);
      const queue: Array<{ seg: (typeof segments)[number]; via?: string }> = start.map((seg) => ({ seg }));
      const covered = new Set(start.map((s) => subnetOf.get(s)));
      while (queue.length > 0) {
        const { seg, via } = queue.shift()!;
        for (const member of seg.members) {
          if (member.node === host.name || !isRouter.get(member.node)) continue;
          const gw = via ?? member.addresses.find((c) => isIP(c.split('/')[0]!) === family)?.split('/')[0];
          if (!gw) continue;
          for (const e of endsOf(member.node)) {
            const next = segmentOf.get(e)!;
            if (seen.has(next)) continue;
            seen.add(next);
            const subnet = subnetOf.get(next);
            if (subnet && !covered.has(subnet)) {
              covered.add(subnet);
              host.routes.push({ to: subnet, via: gw });
            }
            queue.push({ seg: next, via: gw });
          }
        }
      }
    }
  }
}

/** Namespace of a host (or the switch) in a lab. */
export function namespaceName(lab: string, node: string): string {
  return `nm-${lab}-${node}`;
}

/** Checks a lab name given on the command line or to the library. */
export function checkLabName(name: string): string {
  if (!new RegExp(LAB_NAME_PATTERN).test(name)) {
    throw new UsageError(`bad lab name "${name}": use lowercase letters, digits, _ and -, at most 32, starting with a letter or digit`);
  }
  return name;
}

