/** The delay line's counters, and how netmangle prints them (`run`'s table and summary, `status`). */
import type { HoldStats } from './queue.js';

export interface DelayLineStats extends HoldStats {
  /** Frames read from the TAPs. */
  received: number;
  /** Frames written back. */
  sent: number;
  /** Frames the write back failed for (dropped). */
  failed: number;
  /** Frames the TAP dropped before the line read them (its queue full): lost, uncounted otherwise. */
  lost: number;
}

/** The counters as name=value pairs: what the line holds now, and totals. */
export function formatDelayStats(d: DelayLineStats): string {
  return `held=${d.held} peak=${d.peakHeld} delayed=${d.delayed} reordered=${d.reordered} overtaken=${d.overtaken} timed-out=${d.timedOut} followers=${d.followers} over-limit=${d.overLimit} failed=${d.failed} lost=${d.lost}`;
}
