/**
 * `bin/netmangle run` as a child process for the bench: started, waited on until its "attached"
 * line, stopped with SIGINT, and its exit summary (per-rule counters, delay line counters) parsed.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { NetmangleError } from '../../src/errors.js';
import { onCleanup } from './cleanup.js';
import type { BenchContext } from './context.js';

export interface RuleTotals {
  matched: number;
  acted: number;
  dropped: number;
}

/** The exit summary of `netmangle run`. */
export interface RunSummary {
  /** By rule name, from the "rule NAME: matched=… acted=… dropped=…" lines. */
  rules: Record<string, RuleTotals>;
  /** By "DEV/HOOK", the name=value pairs of each "delay line DEV/HOOK: …" line. */
  delayLines: Record<string, Record<string, number>>;
  stdout: string;
}

export interface RunningCli {
  /** Sends SIGINT, waits for the process to detach and exit 0, and parses what it printed. */
  stop(): Promise<RunSummary>;
}

/** Parses the lines `netmangle run` prints when it exits. */
export function parseRunSummary(stdout: string): RunSummary {
  const rules: Record<string, RuleTotals> = {};
  const delayLines: Record<string, Record<string, number>> = {};
  for (const line of stdout.split('\n')) {
    const rule = /^rule (\S+): matched=(\d+) acted=(\d+) dropped=(\d+)\s*$/.exec(line);
    if (rule) {
      rules[rule[1]!] = { matched: Number(rule[2]), acted: Number(rule[3]), dropped: Number(rule[4]) };
      continue;
    }
    const delay = /^delay line (\S+): (.*)$/.exec(line);
    if (delay) {
      const pairs: Record<string, number> = {};
      for (const m of delay[2]!.matchAll(/([a-z-]+)=(\d+)/g)) pairs[m[1]!] = Number(m[2]);
      delayLines[delay[1]!] = pairs;
    }
  }
  return { rules, delayLines, stdout };
}

/**
 * Starts `bin/netmangle run ARGS` and resolves once it printed "attached" (every program on its
 * hook). If the bench is interrupted, the cleanup stack kills it.
 */
export function startCli(ctx: BenchContext, args: readonly string[], timeoutMs = 30_000): Promise<RunningCli> {
  const bin = join(ctx.root, 'bin', 'netmangle');
  const child = spawn(bin, ['run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let exited = false;
  const closed = new Promise<number | string>((resolve) => {
    child.on('close', (code, signal) => {
      exited = true;
      resolve(code ?? signal ?? 'unknown');
    });
    child.on('error', (e) => {
      exited = true;
      err += e.message;
      resolve('spawn error');
    });
  });
  const forget = onCleanup(`netmangle run (pid ${child.pid ?? '?'})`, async () => {
    if (!exited) child.kill('SIGKILL');
    await closed;
  });
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const lastLine = () => (err || out).trim().split('\n').pop() ?? '';
  let attachedAt = 0;

  return new Promise<RunningCli>((resolve, reject) => {
    const poll = setInterval(() => {
      if (/^attached/m.test(out)) {
        attachedAt = Date.now();
        done();
        resolve({ stop });
      }
    }, 5);
    const timer = setTimeout(() => {
      done();
      child.kill('SIGKILL');
      reject(new NetmangleError(`netmangle run did not print "attached" within ${timeoutMs} ms: ${lastLine()}`));
    }, timeoutMs);
    void closed.then((code) => {
      if (/^attached/m.test(out)) return;
      done();
      reject(new NetmangleError(`netmangle run exited (${code}) before attaching: ${lastLine()}`));
    });
    function done(): void {
      clearInterval(poll);
      clearTimeout(timer);
    }
  });

  async function stop(): Promise<RunSummary> {
    // Its signal handlers are installed right after the "attached" line; a moment's margin so SIGINT means "detach and exit 0".
    const margin = attachedAt + 100 - Date.now();
    if (margin > 0) await new Promise((r) => setTimeout(r, margin));
    if (!exited) child.kill('SIGINT');
    const killTimer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const code = await closed;
    clearTimeout(killTimer);
    await forget();
    if (code !== 0) throw new NetmangleError(`netmangle run exited with ${code} after SIGINT: ${lastLine()}`);
    return parseRunSummary(out);
  }
}
