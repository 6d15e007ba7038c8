/** Medians, number formatting and the markdown table of results. */

export interface Row {
  measure: string;
  unit: string;
  /** oci-registry, the peer (distribution proxy) and the limit (nginx / direct upstream). */
  oci?: number;
  dist?: number;
  limit?: number;
  /** Text shown instead of the plain number, per column. */
  text?: { oci?: string; dist?: string; limit?: string };
  /** Every repetition behind the medians, in the row's unit. */
  runs?: { oci?: number[]; dist?: number[]; limit?: number[] };
  /** For the reader: which direction is better. */
  lowerIsBetter?: boolean;
  target?: string;
  /** Whether oci-registry meets the target (undefined: no target or not measurable). */
  met?: boolean;
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** 3 significant-ish digits: 1234 -> "1234", 12.34 -> "12.3", 1.234 -> "1.23". */
export function fmt(value: number | undefined): string {
  if (value === undefined || Number.isNaN(value)) return "";
  const abs = Math.abs(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) {
    return "";
  }
  return `${fmt(a / b)}x`;
}

export function table(rows: Row[]): string {
  const header = [
    "Measure",
    "Unit",
    "oci-registry",
    "distribution proxy",
    "limit (nginx / direct)",
    "oci / dist",
    "oci / limit",
    "Target",
    "Met",
  ];
  const lines = [header, header.map(() => "---")];
  for (const row of rows) {
    lines.push([
      row.measure,
      `${row.unit}${row.lowerIsBetter ? " (lower better)" : ""}`,
      row.text?.oci ?? fmt(row.oci),
      row.text?.dist ?? fmt(row.dist),
      row.text?.limit ?? fmt(row.limit),
      ratio(row.oci, row.dist),
      ratio(row.oci, row.limit),
      row.target ?? "",
      row.met === undefined ? "" : row.met ? "yes" : "**NO**",
    ]);
  }
  return lines.map((cells) => `| ${cells.join(" | ")} |`).join("\n");
}

/** Lines listing every repetition of the rows that had more than one. */
export function runs(rows: Row[]): string[] {
  const lines: string[] = [];
  for (const row of rows) {
    const parts: string[] = [];
    for (
      const [name, values] of [
        ["oci-registry", row.runs?.oci],
        ["distribution", row.runs?.dist],
        ["limit", row.runs?.limit],
      ] as const
    ) {
      if (values && values.length > 1) parts.push(`${name} ${values.map(fmt).join(", ")}`);
    }
    if (parts.length) lines.push(`- ${row.measure} (${row.unit}): ${parts.join("; ")}`);
  }
  return lines.length ? ["Every run behind the medians:", "", ...lines, ""] : [];
}
