/**
 * The one place the service attaches: a fault's spec handed to the library's attach(), and the
 * library's Fault seen as the table needs it (its path, program ids, counters in the service's
 * JSON shape). The service itself never loads or attaches a program.
 */
import { attach, type Fault, type FaultCounters } from '../api/index.js';
import { parseRuleText } from '../rules/parser.js';
import type { Hook, TriggerFields } from './schemas.js';

/** A fault's spec as the table keeps it: the rules as a list, the triggers alone, the seed chosen. */
export interface NormalizedFault {
  name: string;
  rules: string[];
  target: { dev: string; hook: Hook; netns?: string };
  triggers: TriggerFields;
  seed: number;
}

/** The service's view of counters: the library's, each rule with what its delay line holds now. */
export type ServiceCounters = Omit<FaultCounters, 'rules'> & { rules: Array<FaultCounters['rules'][number] & { held: number }> };

export interface AttachedFault {
  readonly path: 'tcx' | 'link' | 'netlink';
  readonly programs: number[];
  readonly warning?: string;
  /** True once the fault is off its hooks (detach(), a delay line that stopped, a failed update). */
  readonly detached: boolean;
  counters(): ServiceCounters;
  detach(): Promise<void>;
  /** The new spec's program in the old one's place: in one step where the attachment allows (a link update), else detach + attach. */
  update(next: NormalizedFault): Promise<'atomically' | 'detach-attach'>;
}

/** Attaches a spec; `onFailure` hears when the fault detached by itself (its delay line stopped). */
export type Attacher = (spec: NormalizedFault, onFailure: (message: string) => void) => Promise<AttachedFault>;

/** Which rules hold packets (delay, reorder): they share the fault's delay line and its `held`. */
function holdingRules(rules: string[]): boolean[] {
  return rules.map((text) => parseRuleText(text).actions.some((a) => a.kind === 'delay' || a.kind === 'reorder'));
}

function serviceCounters(fault: Fault, holds: boolean[]): ServiceCounters {
  const c = fault.counters();
  const held = c.delayLines.reduce((sum, d) => sum + d.held, 0);
  return { ...c, rules: c.rules.map((r, i) => ({ ...r, held: holds[i] ? held : 0 })) };
}

class LibraryFault implements AttachedFault {
  constructor(private readonly fault: Fault, private holds: boolean[]) {}

  get path(): 'tcx' | 'link' | 'netlink' {
    return this.fault.attachments[0]!.path;
  }

  get programs(): number[] {
    return this.fault.attachments.map((x) => x.programId);
  }

  get detached(): boolean {
    return !this.fault.attached;
  }

  get warning(): string | undefined {
    return this.fault.attachments[0]!.warning;
  }

  counters(): ServiceCounters {
    return serviceCounters(this.fault, this.holds);
  }

  async update(next: NormalizedFault): Promise<'atomically' | 'detach-attach'> {
    const { atomic } = await this.fault.replace(next.rules, next.target, { ...next.triggers, seed: next.seed });
    this.holds = holdingRules(next.rules);
    return atomic ? 'atomically' : 'detach-attach';
  }

  detach(): Promise<void> {
    return this.fault.detach();
  }
}

export const libraryAttacher: Attacher = async (spec, onFailure) => {
  const fault = await attach(spec.rules, spec.target, { ...spec.triggers, seed: spec.seed, onFailure });
  return new LibraryFault(fault, holdingRules(spec.rules));
};
