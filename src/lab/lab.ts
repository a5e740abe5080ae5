/**
 * A lab: hosts as network namespaces joined by veth pairs, optionally through a Linux bridge
 * in a namespace of its own, built with iproute2 from a TopologyPlan.
 *
 * Nothing is ever created in the caller's namespace: each veth pair is made inside one host's
 * namespace with its peer placed straight into the other's, so deleting the lab's namespaces
 * removes every interface and bridge it had.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { NetmangleError, UsageError } from '../errors.js';
import { listNamespaces, requireRoot, run, runChecked, type RunOptions, type RunResult } from './run.js';
import {
  createState,
  invokingUser,
  labOfNamespace,
  namespaceBelongsTo,
  processAlive,
  readState,
  recordedLabs,
  removeState,
  stateExists,
  updateState,
  type LabState,
} from './state.js';
import {
  checkLabName,
  DEFAULT_TOPOLOGY,
  loadTopology,
  namespaceName,
  validateTopology,
  type PlannedEnd,
  type TopologyPlan,
  type TopologySpec,
} from './topology.js';

export const DEFAULT_LAB_NAME = 'lab';

/** A topology for Lab.up: a plan, a spec object, a YAML file path, or nothing for h1 ── sw ── h2. */
export type TopologyInput = TopologyPlan | TopologySpec | string | undefined;

export interface LabUpOptions {
  /** Lab name; default: the topology's `name:`, else "lab" when free, else the first free of lab2, lab3 … */
  name?: string;
  /** Called with a short line per build step (the CLI prints them with --verbose). */
  onStep?: (step: string) => void;
}

export interface ExecOptions extends RunOptions {
  /** Throw a NetmangleError when the command exits non-zero. */
  check?: boolean;
}

export interface InterfaceInfo {
  dev: string;
  /** Node at the other end of the veth pair. */
  peer: string;
  peerDev: string;
  mtu?: number;
  /** CIDR strings. */
  addresses: string[];
}

/** A lab that already exists. */
export class LabExistsError extends NetmangleError {
  constructor(name: string, parts: string[]) {
    super(`lab "${name}" already exists${parts.length ? ` (${parts.join(', ')})` : ''}`, {
      hint: `use it (netmangle lab ls ${name}), or remove it first: netmangle lab down ${name}`,
    });
  }
}

function toPlan(input: TopologyInput): TopologyPlan {
  if (input === undefined) return validateTopology(DEFAULT_TOPOLOGY, 'built-in topology');
  if (typeof input === 'string') return loadTopology(input);
  if (Array.isArray((input as TopologyPlan).hosts)) return input as TopologyPlan;
  return validateTopology(input, 'topology');
}

export class Lab implements AsyncDisposable {
  readonly name: string;
  readonly plan: TopologyPlan;
  private readonly children = new Set<ChildProcess>();
  private isDown = false;

  private constructor(name: string, plan: TopologyPlan) {
    this.name = name;
    this.plan = plan;
  }

  /** Builds a lab. Fails (LabExistsError) if a lab of that name exists, without touching it. */
  static async up(topology?: TopologyInput, opts: LabUpOptions = {}): Promise<Lab> {
    requireRoot('building a lab');
    const plan = toPlan(topology);
    const chosen = opts.name ?? plan.name;
    if (chosen !== undefined) return Lab.buildNamed(checkLabName(chosen), plan, opts);
    // No name given: "lab" if it is free, else lab2, lab3 …; a name taken meanwhile by another
    // builder (createState is exclusive) moves on to the next.
    for (let i = 1; ; i += 1) {
      const name = i === 1 ? DEFAULT_LAB_NAME : `${DEFAULT_LAB_NAME}${i}`;
      if (await Lab.nameTaken(name)) continue;
      try {
        return await Lab.buildNamed(name, plan, opts);
      } catch (err) {
        if (err instanceof LabExistsError && i < 1000) continue;
        throw err;
      }
    }
  }

  /** Whether a lab of that name has a record, or namespaces named like its parts. */
  private static async nameTaken(name: string): Promise<boolean> {
    return stateExists(name) || (await listNamespaces()).some((ns) => namespaceBelongsTo(ns, name));
  }

  private static async buildNamed(name: string, plan: TopologyPlan, opts: LabUpOptions): Promise<Lab> {
    const lab = new Lab(name, plan);
    const report = opts.onStep ?? (() => {});
    // For tests that kill a builder half-way: a pause before every step.
    const pause = Number(process.env.NETMANGLE_LAB_STEP_DELAY_MS ?? 0);
    const step = async (s: string) => {
      report(s);
      if (pause > 0) await new Promise((res) => setTimeout(res, pause));
    };

    const leftovers = (await listNamespaces()).filter((ns) => namespaceBelongsTo(ns, name));
    if (leftovers.length > 0 || stateExists(name)) throw new LabExistsError(name, leftovers.length ? leftovers : ['recorded in /run/netmangle/labs']);
    const state: LabState = {
      version: 1,
      name,
      pid: process.pid,
      owner: invokingUser(),
      createdAt: new Date().toISOString(),
      status: 'building',
      namespaces: lab.nodes().map((n) => lab.netns(n)),
      created: [],
      plan,
    };
    if (!createState(state)) throw new LabExistsError(name, ['recorded in /run/netmangle/labs']);

    try {
      await lab.build(state, step);
    } catch (err) {
      await Lab.down(name).catch(() => {});
      throw err;
    }
    state.status = 'up';
    updateState(state);
    return lab;
  }

  /** Opens a lab that is up (built by this or another process). */
  static open(name: string = DEFAULT_LAB_NAME): Lab {
    checkLabName(name);
    const state = readState(name);
    if (!state) {
      const labs = recordedLabs();
      throw new UsageError(`no lab named "${name}"`, {
        hint: labs.length ? `labs: ${labs.join(', ')}` : 'start one with `netmangle lab up`',
      });
    }
    return new Lab(name, state.plan);
  }

  /**
   * Removes everything of a lab netmangle recorded: the namespaces its record lists, after
   * killing the processes inside (a process left in a deleted namespace would keep its
   * interfaces alive). A record cut short by a crash (unreadable) falls back to the naming rule.
   * Namespaces that only look like a lab, with no record, are not netmangle's to remove: that
   * is refused. Returns the namespaces removed.
   */
  static async down(name: string = DEFAULT_LAB_NAME): Promise<string[]> {
    requireRoot('taking a lab down');
    checkLabName(name);
    const state = readState(name);
    const existing = await listNamespaces();
    const lookalikes = existing.filter((ns) => namespaceBelongsTo(ns, name)).sort();
    if (!stateExists(name)) {
      if (lookalikes.length === 0) return [];
      throw new NetmangleError(`netmangle has no record of creating lab "${name}", so it leaves ${lookalikes.join(', ')} alone`, {
        hint: `if they are yours, remove them with: ${lookalikes.map((ns) => `ip netns del ${ns}`).join('; ')}`,
      });
    }
    const targets = state ? state.namespaces.filter((ns) => existing.includes(ns)) : lookalikes;
    const failures: string[] = [];
    for (const ns of targets) {
      await killProcessesIn(ns);
      const r = await run(['ip', 'netns', 'del', ns]);
      if (r.code !== 0 && !/No such file/.test(r.stderr)) failures.push(`${ns}: ${r.stderr.trim()}`);
    }
    if (failures.length > 0) throw new NetmangleError(`could not remove all of lab "${name}": ${failures.join('; ')}`, { hint: `run \`netmangle lab down ${name}\` again` });
    removeState(name);
    return targets;
  }

  /** Labs netmangle recorded, with who built them (undefined for an old or unreadable record). */
  static recorded(): Array<{ name: string; owner: number | undefined }> {
    return recordedLabs().map((name) => ({ name, owner: readState(name)?.owner }));
  }

  /** The labs the user running netmangle built (see invokingUser). */
  static mine(): string[] {
    const me = invokingUser();
    return Lab.recorded().filter((l) => l.owner === me).map((l) => l.name);
  }

  /** Every lab with a record or with namespaces named like one. */
  static async list(): Promise<string[]> {
    const names = new Set(recordedLabs());
    for (const ns of await listNamespaces()) {
      const lab = labOfNamespace(ns);
      if (lab) names.add(lab);
    }
    return [...names].sort();
  }

  /** Host names (the switch is not a host). */
  get hosts(): string[] {
    return this.plan.hosts.map((h) => h.name);
  }

  /** Hosts, then the switch. */
  nodes(): string[] {
    return this.plan.switch ? [...this.hosts, this.plan.switch] : this.hosts;
  }

  /** The namespace of a host (or of the switch). */
  netns(host: string): string {
    this.checkNode(host);
    return namespaceName(this.name, host);
  }

  /** The interfaces of a host (or the switch's ports), as planned. */
  interfaces(host: string): InterfaceInfo[] {
    this.checkNode(host);
    const out: InterfaceInfo[] = [];
    for (const l of this.plan.links) {
      for (const [end, other] of [[l.a, l.b], [l.b, l.a]] as const) {
        if (end.node === host) out.push({ dev: end.dev, peer: other.node, peerDev: other.dev, mtu: end.mtu, addresses: end.addresses });
      }
    }
    return out;
  }

  /** The host's first address of a family (without prefix length), optionally on one interface. */
  address(host: string, family: 4 | 6 = 4, dev?: string): string {
    for (const i of this.interfaces(host)) {
      if (dev !== undefined && i.dev !== dev) continue;
      const a = i.addresses.find((c) => (family === 4 ? !c.includes(':') : c.includes(':')));
      if (a) return a.split('/')[0]!;
    }
    throw new UsageError(`host "${host}" has no IPv${family} address${dev ? ` on ${dev}` : ''} in lab "${this.name}"`);
  }

  /** Runs a command in a host's namespace and collects its output and exit code. */
  async exec(host: string, argv: string[], opts: ExecOptions = {}): Promise<RunResult> {
    if (argv.length === 0) throw new UsageError('no command to run');
    const r = await run(['ip', 'netns', 'exec', this.netns(host), ...argv], opts);
    if (opts.check && r.code !== 0) {
      const why = (r.stderr.trim() || r.stdout.trim()).split('\n').pop() ?? '';
      throw new NetmangleError(`in ${host}: \`${argv.join(' ')}\` exited with ${r.code}${why ? `: ${why}` : ''}`);
    }
    return r;
  }

  /** Starts a long-running command in a host's namespace. It is killed when the lab goes down. */
  spawn(host: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
    if (argv.length === 0) throw new UsageError('no command to run');
    const child = spawn('ip', ['netns', 'exec', this.netns(host), ...argv], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    child.on('error', () => this.children.delete(child));
    return child;
  }

  /** Takes the lab down (idempotent). */
  async down(): Promise<void> {
    if (this.isDown) return;
    this.isDown = true;
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await Lab.down(this.name);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.down();
  }

  private checkNode(host: string): void {
    if (!this.nodes().includes(host)) {
      throw new UsageError(`no host "${host}" in lab "${this.name}" (hosts are ${this.hosts.join(', ')}${this.plan.switch ? `; switch ${this.plan.switch}` : ''})`);
    }
  }

  private async build(state: LabState, step: (s: string) => Promise<void>): Promise<void> {
    const ip = (node: string, args: string[], what: string) => runChecked(['ip', '-n', this.netns(node), ...args], what);
    const inNs = (node: string, argv: string[], what: string) => runChecked(['ip', 'netns', 'exec', this.netns(node), ...argv], what);

    for (const node of this.nodes()) {
      const ns = this.netns(node);
      await step(`namespace ${ns}`);
      await runChecked(['ip', 'netns', 'add', ns], `create namespace for ${node}`);
      state.created.push(ns);
      updateState(state);
      await ip(node, ['link', 'set', 'lo', 'up'], `bring up loopback in ${node}`);
      // No duplicate address detection: a lab's addresses are unique by construction, and
      // while DAD runs (about 1 s) link-local addresses are tentative and routed IPv6 fails.
      await inNs(node, ['sysctl', '-qw', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0'], `turn off IPv6 DAD in ${node}`);
    }

    const sw = this.plan.switch;
    if (sw) {
      await step(`bridge ${sw}`);
      // Without snooping the bridge floods multicast (IPv6 neighbour discovery) to every port.
      await ip(sw, ['link', 'add', sw, 'type', 'bridge', 'mcast_snooping', '0'], 'create the bridge');
      // The switch is a layer-2 box: no addresses, no router solicitations in captures.
      await inNs(sw, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1'], 'quiet IPv6 on the switch');
      await ip(sw, ['link', 'set', sw, 'up'], 'bring up the bridge');
    }

    const gsoOf = new Map(this.plan.hosts.map((h) => [h.name, h.gsoMaxSegs]));
    for (const link of this.plan.links) {
      const { a, b } = link;
      await step(`veth ${a.node}:${a.dev} ── ${b.node}:${b.dev}`);
      await ip(a.node, ['link', 'add', a.dev, 'type', 'veth', 'peer', 'name', b.dev, 'netns', this.netns(b.node)], `create veth pair ${a.node}:${a.dev} ── ${b.node}:${b.dev}`);
      for (const end of [a, b]) {
        if (end.mtu !== undefined) await ip(end.node, ['link', 'set', 'dev', end.dev, 'mtu', String(end.mtu)], `set MTU of ${end.node}:${end.dev}`);
        const gso = gsoOf.get(end.node);
        if (gso !== undefined) await ip(end.node, ['link', 'set', 'dev', end.dev, 'gso_max_segs', String(gso)], `set gso_max_segs of ${end.node}:${end.dev}`);
        if (end.node === sw) await ip(sw, ['link', 'set', 'dev', end.dev, 'master', sw], `attach ${end.dev} to the bridge`);
        await this.setOffloads(end);
      }
      for (const end of [a, b]) await ip(end.node, ['link', 'set', 'dev', end.dev, 'up'], `bring up ${end.node}:${end.dev}`);
      for (const end of [a, b]) {
        for (const cidr of end.addresses) {
          // nodad: the address is usable at once instead of after ~1 s of duplicate detection.
          const extra = cidr.includes(':') ? ['nodad'] : [];
          await ip(end.node, ['addr', 'add', cidr, 'dev', end.dev, ...extra], `add ${cidr} to ${end.node}:${end.dev}`);
        }
      }
    }

    for (const host of this.plan.hosts) {
      if (host.forwarding) {
        await step(`forwarding on ${host.name}`);
        await inNs(host.name, ['sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'], `enable forwarding on ${host.name}`);
      }
      for (const r of host.routes) {
        await step(`route ${host.name}: ${r.to} via ${r.via}`);
        const family = r.via.includes(':') ? '-6' : '-4';
        await runChecked(['ip', '-n', this.netns(host.name), family, 'route', 'add', r.to, 'via', r.via], `add route ${r.to} via ${r.via} on ${host.name}`);
      }
    }
  }

  private async setOffloads(end: PlannedEnd): Promise<void> {
    const args: string[] = [];
    if (end.txChecksum !== undefined) args.push('tx', end.txChecksum ? 'on' : 'off');
    if (end.rxChecksum !== undefined) args.push('rx', end.rxChecksum ? 'on' : 'off');
    if (args.length === 0) return;
    await runChecked(['ip', 'netns', 'exec', this.netns(end.node), 'ethtool', '-K', end.dev, ...args], `set checksum offloads of ${end.node}:${end.dev}`);
  }
}

/** Kills every process whose network namespace is `ns`. */
async function killProcessesIn(ns: string): Promise<void> {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const r = await run(['ip', 'netns', 'pids', ns]);
    const pids = r.stdout.split(/\s+/).filter((p) => /^\d+$/.test(p)).map(Number).filter((p) => p !== process.pid);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Builds a lab, runs `fn` with it and takes it down however `fn` ends. */
export async function withLab<T>(topology: TopologyInput, fn: (lab: Lab) => Promise<T> | T, opts: LabUpOptions = {}): Promise<T> {
  const lab = await Lab.up(topology, opts);
  try {
    return await fn(lab);
  } finally {
    await lab.down();
  }
}

/** Whether the process that recorded a lab still runs (false for a builder killed mid-build). */
export function labBuilderAlive(name: string): boolean | undefined {
  const s = readState(name);
  return s ? processAlive(s.pid) : undefined;
}
