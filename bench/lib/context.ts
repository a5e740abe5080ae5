/** What every bench section gets, and what it gives back. */

export interface BenchContext {
  /** A smoke run: fewer rounds, smaller repeats and files, same code paths. */
  quick: boolean;
  /** A temporary directory for objects, captures and logs; removed at the end. */
  tmp: string;
  /** The repository's root (where bin/netmangle and BENCHMARKS.md are). */
  root: string;
  /** A short unique suffix for lab, namespace and pin names of this run. */
  runId: string;
  /** A progress line on stderr. */
  log(line: string): void;
}

export interface SectionResult {
  /** Markdown: the section's heading, method, table(s) and notes. */
  markdown: string;
  /** One line per headline ratio, for the summary at the top and the console. */
  headlines: string[];
}
