/**
 * Putting a netmangle rule on a lab host's interface for an experiment, through the CLI's
 * `netmangle run`, the same way a person would:
 *
 *     netmangle run --netns <ns> --dev <dev> --hook <hook> '<rule>' [--probability P] [--seed S]
 *
 * The agreement with `run`: it prints a first stdout line starting with "attached" once the
 * program is on the hook, keeps it there until SIGINT, then detaches and exits 0. Lines it
 * prints meanwhile that are a JSON object of numbers (or `name=value` pairs) are counters;
 * `counters()` returns the latest.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetmangleError } from '../errors.js';
import { run } from './run.js';
import type { Lab } from './lab.js';

/** Hook names as `netmangle run --hook` spells them: XDP, tc ingress, tc egress. */
export type Hook = 'xdp' | 'ingress' | 'egress';

export interface ApplyRuleOptions {
  /** Chance that a matching packet is changed (0..1). */
  probability?: number;
  seed?: number;
  /**
   * Make every TCP segment a packet of its own at the hook (gso_max_segs 1 on the device for
   * as long as the rule is on): at tc egress the kernel otherwise hands over GSO super-packets
   * and keeps PSH only on the last segment it cuts from each.
   */
  perSegment?: boolean;
  /** How long to wait for "attached" (default 20 s). */
  attachTimeoutMs?: number;
}

export interface AppliedRule {
  /** Stops `netmangle run` (SIGINT) and waits until it has detached. */
  detach(): Promise<void>;
  /** The latest counters `run` reported (empty when it reported none). */
  counters(): Promise<Record<string, number>>;
  /** Everything `run` printed so far, for error messages and logs. */
  output(): string;
}

/** `netmangle run` is not part of this build. */
export class RuleUnavailableError extends NetmangleError {
  constructor() {
    super('`netmangle run` is not available in this build, so rules cannot be attached yet');
  }
}

const binPath = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'netmangle');
/**
 * Node's options for a netmangle started as `node bin/netmangle` (no shebang): the shebang's
 * own, so that a SIGUSR1 before the launcher's first line cannot open the inspector either.
 */
export const NETMANGLE_NODE_ARGS = ['--inspect-port=[100::1]:9229'] as const;

let runAvailable: boolean | undefined;

/** Whether this build's CLI has a `run` command (asked once, of the CLI itself). */
export async function ruleCommandAvailable(): Promise<boolean> {
  if (runAvailable === undefined) {
    const r = await run([process.execPath, ...NETMANGLE_NODE_ARGS, binPath, 'run', '--help'], { timeoutMs: 15_000 });
    runAvailable = r.code === 0 && /--hook/.test(r.stdout);
  }
  return runAvailable;
}

function parseCounters(line: string): Record<string, number> | undefined {
  const t = line.trim();
  if (t.startsWith('{')) {
    try {
      const obj = JSON.parse(t) as Record<string, unknown>;
      const out: Record<string, number> = {};
      for (const [k, v] of Object.entries(obj)) if (typeof v === 'number') out[k] = v;
      return Object.keys(out).length ? out : undefined;
    } catch {
      return undefined;
    }
  }
  const pairs = [...t.matchAll(/([A-Za-z_][\w.-]*)=(\d+(?:\.\d+)?)/g)];
  if (pairs.length === 0) return undefined;
  return Object.fromEntries(pairs.map((m) => [m[1]!, Number(m[2])]));
}

/**
 * Attaches `ruleText` at `hook` of `dev` in `host`'s namespace, by running `netmangle run`.
 * Throws RuleUnavailableError when this build has no `run` command.
 */
export async function applyRule(lab: Lab, host: string, dev: string, hook: Hook, ruleText: string, opts: ApplyRuleOptions = {}): Promise<AppliedRule> {
  if (!(await ruleCommandAvailable())) throw new RuleUnavailableError();
  const ns = lab.netns(host);
  let restoreGso: number | undefined;
  if (opts.perSegment) {
    const shown = await lab.exec(host, ['ip', '-d', 'link', 'show', 'dev', dev], { check: true });
    restoreGso = Number(/gso_max_segs (\d+)/.exec(shown.stdout)?.[1] ?? 65535);
    await lab.exec(host, ['ip', 'link', 'set', 'dev', dev, 'gso_max_segs', '1'], { check: true });
  }
  const argv = [...NETMANGLE_NODE_ARGS, binPath, 'run', '--netns', ns, '--dev', dev, '--hook', hook, ruleText];
  if (opts.probability !== undefined) argv.push('--probability', String(opts.probability));
  if (opts.seed !== undefined) argv.push('--seed', String(opts.seed));
  const child: ChildProcess = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let latest: Record<string, number> = {};
  let pending = '';
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));

  const restore = async () => {
    if (restoreGso !== undefined) await lab.exec(host, ['ip', 'link', 'set', 'dev', dev, 'gso_max_segs', String(restoreGso)]).catch(() => {});
  };

  try {
    await new Promise<void>((resolve, reject) => {
      let attached = false;
      const timer = setTimeout(() => {
        reject(new NetmangleError(`netmangle run did not attach within ${opts.attachTimeoutMs ?? 20_000} ms: ${lastLine(stderr || stdout)}`));
      }, opts.attachTimeoutMs ?? 20_000);
      child.stdout!.on('data', (d: string) => {
        stdout += d;
        pending += d;
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) {
          if (!attached && line.startsWith('attached')) {
            attached = true;
            clearTimeout(timer);
            resolve();
          } else {
            const c = parseCounters(line);
            if (c) latest = c;
          }
        }
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (!attached) reject(new NetmangleError(`netmangle run exited (${signal ?? `code ${code}`}) before attaching: ${lastLine(stderr || stdout)}`));
      });
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(new NetmangleError(`cannot start netmangle run: ${err.message}`));
      });
    });
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await restore();
    throw err;
  }

  let detached = false;
  return {
    async detach() {
      if (detached) return;
      detached = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await closed;
        clearTimeout(timer);
      }
      await restore();
    },
    async counters() {
      return { ...latest };
    },
    output() {
      return stdout + stderr;
    },
  };
}

function lastLine(text: string): string {
  return text.trim().split('\n').pop() ?? '';
}
