/**
 * The service's faults: a table of named rule sets, each attached through the library, with
 * its lease. Every change (create, patch, delete, renew, populate, reset, a lease running out)
 * runs in one queue, one after another: attaching is synchronous kernel work anyway, and the
 * queue makes "name taken" and "programs on the hooks = faults listed" true at every moment a
 * reader can look. Reads do not wait in the queue.
 */
import { parseDuration } from '../cli/duration.js';
import { randomSeed } from '../compiler/prng.js';
import { RuleError } from '../rules/errors.js';
import { parseRuleText } from '../rules/parser.js';
import type { AttachedFault, Attacher, NormalizedFault } from './attacher.js';
import { HttpError, toHttpError } from './errors.js';
import { TRIGGER_FIELDS, type FaultJson, type FaultPatch, type FaultSpec, type Replaced, type TriggerFields } from './schemas.js';

interface Entry {
  spec: NormalizedFault;
  /** The spec as the client gave it (seed left out when it was chosen), for populate's "unchanged". */
  given: string;
  attached: AttachedFault;
  createdAt: Date;
  ttlMs?: number;
  expiresAt?: number;
  timer?: NodeJS.Timeout;
}

export interface PopulateResult {
  created: string[];
  replaced: string[];
  unchanged: string[];
  faults: FaultJson[];
}

/** The rule texts of a spec, each checked for syntax: an error there is the client's (400), with its column. */
function ruleTexts(rules: string | string[], field = 'rules'): string[] {
  const list = typeof rules === 'string' ? [rules] : rules;
  list.forEach((text, i) => {
    try {
      parseRuleText(text);
    } catch (err) {
      if (!(err instanceof RuleError)) throw err;
      throw new HttpError(400, err.reason, err.hint, { field: typeof rules === 'string' ? field : `${field}[${i}]`, column: err.span.start + 1 });
    }
  });
  return list;
}

function ttlMs(ttl: number | string | undefined): number | undefined {
  if (ttl === undefined) return undefined;
  if (typeof ttl === 'number') return Math.round(ttl * 1000);
  try {
    return parseDuration(ttl, 'ttl');
  } catch (err) {
    throw new HttpError(400, (err as Error).message, 'write it like 30 (seconds), "500ms", "30s" or "1m30s"', { field: 'ttl' });
  }
}

function triggersOf(spec: TriggerFields): TriggerFields {
  const out: Record<string, unknown> = {};
  for (const k of TRIGGER_FIELDS) if (spec[k] !== undefined) out[k] = spec[k];
  return out as TriggerFields;
}

/** The spec with rules as a list, the triggers alone, and a seed (chosen here when not given, so the reply can say it). */
function normalize(spec: FaultSpec): NormalizedFault {
  const out: NormalizedFault = {
    name: spec.name,
    rules: ruleTexts(spec.rules),
    target: spec.netns === undefined ? { dev: spec.dev, hook: spec.hook } : { dev: spec.dev, hook: spec.hook, netns: spec.netns },
    triggers: triggersOf(spec),
    seed: spec.seed ?? randomSeed(),
  };
  return out;
}

/** What decides whether a fault's program would change: rules, target, triggers, and the seed if given. */
function programKey(spec: FaultSpec): string {
  const rules = typeof spec.rules === 'string' ? [spec.rules] : spec.rules;
  return JSON.stringify({ rules, dev: spec.dev, hook: spec.hook, netns: spec.netns ?? null, triggers: triggersOf(spec), seed: spec.seed ?? null });
}

export class FaultTable {
  private readonly entries = new Map<string, Entry>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  /** `log` hears one line per change (created, replaced, deleted, expired …), for the service's output. */
  constructor(private readonly attach: Attacher, private readonly log: (line: string) => void = () => {}) {}

  private where(s: NormalizedFault, a: AttachedFault): string {
    return `${s.target.dev} ${s.target.hook}${s.target.netns === undefined ? '' : ` (netns ${s.target.netns})`} via ${a.path}, program ${a.programs.join(', ')}`;
  }

  /** Attaches through the library; a fault that later detaches by itself (its delay line stopped) leaves the table. */
  private async attachSpec(spec: NormalizedFault): Promise<AttachedFault> {
    let attached: AttachedFault | undefined;
    try {
      attached = await this.attach(spec, (message) => {
        const e = this.entries.get(spec.name);
        if (!e || e.attached !== attached) return;
        this.forget(spec.name);
        this.log(`fault ${spec.name} detached by itself: ${message}`);
      });
    } catch (err) {
      // A rule the checker refused names the rule it is: rules[1].
      throw toHttpError(err, (e) => {
        const i = spec.rules.indexOf(e.source);
        return i < 0 ? 'rules' : spec.rules.length === 1 ? 'rules' : `rules[${i}]`;
      });
    }
    return attached;
  }

  /** An interface has one XDP hook: a second fault there is refused naming the first (the kernel would only name its program). */
  private refuseSharedXdp(spec: NormalizedFault): void {
    if (spec.target.hook !== 'xdp') return;
    for (const [name, e] of this.entries) {
      const t = e.spec.target;
      if (name !== spec.name && t.hook === 'xdp' && t.dev === spec.target.dev && t.netns === spec.target.netns) {
        throw new HttpError(409, `the XDP hook of ${t.dev}${t.netns === undefined ? '' : ` (namespace ${t.netns})`} holds fault ${name}`, `an interface has one XDP program: put the rules into ${name} (PATCH /faults/${name}), or use hook ingress, where faults share the hook`, { field: 'hook' });
      }
    }
  }

  /** Runs `op` after every change queued before it. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new HttpError(503, 'the service is shutting down');
      return op();
    });
    this.queue = run.catch(() => {});
    return run;
  }

  get size(): number {
    return this.entries.size;
  }

  list(withCounters = false): FaultJson[] {
    return [...this.entries.values()].map((e) => this.json(e, withCounters));
  }

  get(name: string, withCounters = true): FaultJson {
    return this.json(this.entry(name), withCounters);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new HttpError(404, `no fault named ${name}`, 'GET /faults lists the faults');
    return e;
  }

  create(spec: FaultSpec): Promise<FaultJson> {
    const normalized = normalize(spec);
    const lease = ttlMs(spec.ttl);
    return this.serial(async () => {
      if (this.entries.has(spec.name)) {
        throw new HttpError(409, `a fault named ${spec.name} already exists`, `PATCH /faults/${spec.name} changes it; DELETE /faults/${spec.name} removes it`, { field: 'name' });
      }
      this.refuseSharedXdp(normalized);
      const attached = await this.attachSpec(normalized);
      const e: Entry = { spec: normalized, given: programKey(spec), attached, createdAt: new Date() };
      this.entries.set(spec.name, e);
      this.lease(e, lease);
      this.log(`created ${spec.name}: ${this.where(normalized, attached)}`);
      return this.json(e, false);
    });
  }

  patch(name: string, patch: FaultPatch): Promise<{ fault: FaultJson; replaced: Replaced }> {
    if (patch.rules !== undefined && patch.rules !== null) ruleTexts(patch.rules);
    const lease = patch.ttl === undefined || patch.ttl === null ? undefined : ttlMs(patch.ttl);
    return this.serial(async () => {
      const e = this.entry(name);
      const old = e.spec;
      for (const k of ['dev', 'hook', 'netns'] as const) {
        const now = k === 'netns' ? old.target.netns : old.target[k];
        if (patch[k] !== undefined && patch[k] !== now) {
          throw new HttpError(400, `a fault's ${k} cannot change (it is ${now === undefined ? 'not set' : now})`, `DELETE /faults/${name}, then POST /faults with the new ${k}`, { field: k });
        }
      }
      const triggers: Record<string, unknown> = { ...old.triggers };
      for (const k of TRIGGER_FIELDS) {
        if (patch[k] === null) delete triggers[k];
        else if (patch[k] !== undefined) triggers[k] = patch[k];
      }
      const givenSeed = patch.seed === null ? undefined : patch.seed ?? (JSON.parse(e.given).seed as number | null) ?? undefined;
      const spec: FaultSpec = {
        name,
        rules: patch.rules ?? old.rules,
        dev: old.target.dev,
        hook: old.target.hook,
        ...(old.target.netns === undefined ? {} : { netns: old.target.netns }),
        ...(triggers as TriggerFields),
        ...(givenSeed === undefined ? {} : { seed: givenSeed }),
      };
      const key = programKey(spec);
      let replaced: Replaced = 'unchanged';
      if (key !== e.given) {
        const next: NormalizedFault = { ...normalize(spec), seed: givenSeed ?? old.seed };
        replaced = await this.replace(e, next);
        e.given = key;
      }
      if (patch.ttl === null) this.lease(e, undefined);
      else if (patch.ttl !== undefined) this.lease(e, lease);
      if (replaced !== 'unchanged') this.log(`replaced ${name} ${replaced}: ${this.where(e.spec, e.attached)}`);
      return { fault: this.json(e, false), replaced };
    });
  }

  /**
   * Puts a new program in the place of the fault's: in one step where its attachment allows
   * (a link update), else detach the old and attach the new. A refusal leaves the fault as it
   * was (the library attaches the old rules again); if even that fails, the fault is gone.
   */
  private async replace(e: Entry, next: NormalizedFault): Promise<Replaced> {
    try {
      const how = await e.attached.update(next);
      e.spec = next;
      return how;
    } catch (err) {
      if (e.attached.detached) this.forget(e.spec.name);
      throw toHttpError(err, (re) => {
        const i = next.rules.indexOf(re.source);
        return i < 0 || next.rules.length === 1 ? 'rules' : `rules[${i}]`;
      });
    }
  }

  remove(name: string): Promise<void> {
    return this.serial(async () => {
      const e = this.entry(name);
      this.forget(name);
      await e.attached.detach();
      this.log(`deleted ${name}`);
    });
  }

  renew(name: string, ttl: number | string | undefined): Promise<FaultJson> {
    const given = ttlMs(ttl);
    return this.serial(async () => {
      const e = this.entry(name);
      const lease = given ?? e.ttlMs;
      if (lease === undefined) {
        throw new HttpError(400, `fault ${name} has no ttl to renew`, `give one: POST /faults/${name}/renew with {"ttl": "30s"}`, { field: 'ttl' });
      }
      this.lease(e, lease);
      return this.json(e, false);
    });
  }

  /**
   * Makes the listed faults exist as given: new ones are created, changed ones replaced, the
   * others left attached as they are (their lease renewed). Faults not listed are not touched.
   * All or nothing: on a failure, the faults this call created are detached and those it
   * replaced get their old spec back.
   */
  populate(specs: FaultSpec[]): Promise<PopulateResult> {
    const seen = new Set<string>();
    const prepared = specs.map((spec, i) => {
      try {
        if (seen.has(spec.name)) throw new HttpError(400, `fault ${spec.name} is listed twice`, undefined, { field: 'name' });
        seen.add(spec.name);
        return { spec, normalized: normalize(spec), lease: ttlMs(spec.ttl) };
      } catch (err) {
        throw err instanceof HttpError ? err.within(`[${i}]`) : err;
      }
    });
    return this.serial(async () => {
      const result: PopulateResult = { created: [], replaced: [], unchanged: [], faults: [] };
      const undo: Array<() => Promise<void>> = [];
      for (const [i, p] of prepared.entries()) {
        try {
          const e = this.entries.get(p.spec.name);
          const key = programKey(p.spec);
          if (e && e.given === key) {
            result.unchanged.push(p.spec.name);
          } else if (e) {
            const before = { spec: e.spec, given: e.given };
            await this.replace(e, { ...p.normalized, seed: p.spec.seed ?? e.spec.seed });
            e.given = key;
            undo.push(async () => {
              if (!this.entries.has(p.spec.name)) return;
              await this.replace(e, before.spec);
              e.given = before.given;
            });
            result.replaced.push(p.spec.name);
          } else {
            this.refuseSharedXdp(p.normalized);
            const attached = await this.attachSpec(p.normalized);
            const created: Entry = { spec: p.normalized, given: key, attached, createdAt: new Date() };
            this.entries.set(p.spec.name, created);
            undo.push(async () => {
              this.forget(p.spec.name);
              await created.attached.detach();
            });
            result.created.push(p.spec.name);
          }
        } catch (err) {
          for (const step of undo.reverse()) await step().catch(() => {});
          const located = err instanceof HttpError ? err : undefined;
          throw located ? located.within(`[${i}]`) : err;
        }
      }
      if (result.created.length + result.replaced.length > 0) {
        this.log(`populate: created ${result.created.join(', ') || 'none'}; replaced ${result.replaced.join(', ') || 'none'}; ${result.unchanged.length} unchanged`);
      }
      for (const p of prepared) {
        const e = this.entries.get(p.spec.name)!;
        this.lease(e, p.lease);
        result.faults.push(this.json(e, false));
      }
      return result;
    });
  }

  /** Detaches every fault; the names of those it detached. */
  reset(): Promise<string[]> {
    return this.serial(async () => {
      const names = await this.detachAll();
      this.log(`reset: detached ${names.length} fault${names.length === 1 ? '' : 's'}`);
      return names;
    });
  }

  /** On exit: detaches everything and refuses further changes. */
  async close(): Promise<string[]> {
    const names = await this.serial(() => this.detachAll());
    this.closed = true;
    return names;
  }

  private async detachAll(): Promise<string[]> {
    const names = [...this.entries.keys()];
    let first: unknown;
    for (const name of names) {
      const e = this.entries.get(name)!;
      this.forget(name);
      try {
        await e.attached.detach();
      } catch (err) {
        first ??= err;
      }
    }
    if (first) throw first;
    return names;
  }

  private forget(name: string): void {
    const e = this.entries.get(name);
    if (e?.timer) clearTimeout(e.timer);
    this.entries.delete(name);
  }

  /** Sets (or with undefined, removes) the fault's lease, counted from now. */
  private lease(e: Entry, ms: number | undefined): void {
    if (e.timer) clearTimeout(e.timer);
    e.timer = undefined;
    e.ttlMs = ms;
    e.expiresAt = ms === undefined ? undefined : Date.now() + ms;
    if (ms === undefined) return;
    // setTimeout holds at most 2^31-1 ms; a longer lease is checked again when that fires.
    const wait = Math.min(ms, 0x7fffffff);
    e.timer = setTimeout(() => {
      void this.serial(async () => {
        const now = this.entries.get(e.spec.name);
        if (now !== e || e.expiresAt === undefined) return;
        if (e.expiresAt > Date.now()) {
          this.lease(e, e.expiresAt - Date.now());
          return;
        }
        this.forget(e.spec.name);
        await e.attached.detach();
        this.log(`expired ${e.spec.name}`);
      }).catch((err: unknown) => {
        this.log(`detaching expired fault ${e.spec.name}: ${(err as Error).message}`);
      });
    }, wait);
  }

  private json(e: Entry, withCounters: boolean): FaultJson {
    const s = e.spec;
    const out: FaultJson = {
      name: s.name,
      rules: s.rules,
      dev: s.target.dev,
      hook: s.target.hook,
      ...(s.target.netns === undefined ? {} : { netns: s.target.netns }),
      ...s.triggers,
      seed: s.seed,
      path: e.attached.path,
      programs: e.attached.programs,
      createdAt: e.createdAt.toISOString(),
    };
    if (e.ttlMs !== undefined) out.ttl = e.ttlMs / 1000;
    if (e.expiresAt !== undefined) out.expiresAt = new Date(e.expiresAt).toISOString();
    if (e.attached.warning) out.warning = e.attached.warning;
    if (withCounters) out.counters = e.attached.counters();
    return out;
  }

  /** Every fault with its counters, for /metrics. */
  snapshot(): FaultJson[] {
    return [...this.entries.values()].map((e) => this.json(e, true));
  }
}
