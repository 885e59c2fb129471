import type pg from 'pg';
import { quoteVaultTable, type VaultTable } from '../db/table.js';

/** Rows of one table that are wrapped under a KEK. */
export interface TableCount {
  table: string;
  rows: number;
}

/** Counts, per table, the rows wrapped under `kekArn`, only those of `matters` when given. */
export async function countRowsOnKek(
  pool: pg.Pool,
  tables: VaultTable[],
  kekArn: string,
  matters: string[] | null = null,
): Promise<TableCount[]> {
  const counts: TableCount[] = [];
  for (const table of tables) {
    const q = quoteVaultTable(table);
    const matterFilter = matters === null ? '' : ` AND ${q.matter} = ANY($2::text[])`;
    const { rows } = await pool.query<{ count: string }>(
      `SELECT count(*)::text AS count FROM ${q.table} WHERE ${q.kekId} = $1${matterFilter}`,
      matters === null ? [kekArn] : [kekArn, matters],
    );
    counts.push({ table: table.name, rows: Number(rows[0]?.count ?? 0) });
  }
  return counts;
}

/** Sums table counts. */
export function totalRows(counts: TableCount[]): number {
  return counts.reduce((sum, count) => sum + count.rows, 0);
}

/** Formats non-zero counts as "12 rows in public.vault, 3 rows in app.docs". */
export function describeCounts(counts: TableCount[]): string {
  return counts
    .filter((count) => count.rows > 0)
    .map((count) => `${count.rows} rows in ${count.table}`)
    .join(', ');
}

/** Rows per source KEK of the given matters (all matters when null), per table. */
export async function rowsPerKek(
  pool: pg.Pool,
  tables: VaultTable[],
  matters: string[] | null,
): Promise<Array<{ table: string; kekArn: string; rows: number }>> {
  const result: Array<{ table: string; kekArn: string; rows: number }> = [];
  for (const table of tables) {
    const q = quoteVaultTable(table);
    const filter = matters === null ? '' : ` WHERE ${q.matter} = ANY($1::text[])`;
    const { rows } = await pool.query<{ kek: string; count: string }>(
      `SELECT ${q.kekId} AS kek, count(*)::text AS count FROM ${q.table}${filter} GROUP BY 1 ORDER BY 1`,
      matters === null ? [] : [matters],
    );
    for (const row of rows) result.push({ table: table.name, kekArn: row.kek, rows: Number(row.count) });
  }
  return result;
}

/** Distinct matter ids with rows under `kekArn`, over every table. */
export async function mattersOnKek(pool: pg.Pool, tables: VaultTable[], kekArn: string): Promise<string[]> {
  const matters = new Set<string>();
  for (const table of tables) {
    const q = quoteVaultTable(table);
    const { rows } = await pool.query<{ matter: string }>(`SELECT DISTINCT ${q.matter} AS matter FROM ${q.table} WHERE ${q.kekId} = $1`, [kekArn]);
    for (const row of rows) matters.add(row.matter);
  }
  return [...matters].sort();
}

/** Distinct KEKs that wrap the rows of one matter, over every table. */
export async function keksOfMatter(pool: pg.Pool, tables: VaultTable[], matter: string): Promise<string[]> {
  const keks = new Set<string>();
  for (const table of tables) {
    const q = quoteVaultTable(table);
    const { rows } = await pool.query<{ kek: string }>(`SELECT DISTINCT ${q.kekId} AS kek FROM ${q.table} WHERE ${q.matter} = $1`, [matter]);
    for (const row of rows) keks.add(row.kek);
  }
  return [...keks].sort();
}

/** A vault row as the lifecycle checks read it. */
export interface SampledRow {
  table: string;
  key: string;
  matter: string;
  token: string;
  wrappedKey: Buffer;
  kekArn: string;
}

/**
 * Draws up to `size` random rows from each table, only of `matters` when
 * given. NOTE: `ORDER BY random()` reads the whole scope; it suits audits
 * and tests, not tables of hundreds of millions of rows.
 */
export async function sampleRows(pool: pg.Pool, tables: VaultTable[], matters: string[] | null, size: number): Promise<SampledRow[]> {
  const sample: SampledRow[] = [];
  for (const table of tables) {
    const q = quoteVaultTable(table);
    const filter = matters === null ? '' : ` WHERE ${q.matter} = ANY($2::text[])`;
    const { rows } = await pool.query<{ key: string; matter: string; token: string; wrapped: Buffer; kek: string }>(
      `SELECT ${q.key}::text AS key, ${q.matter} AS matter, ${q.token} AS token, ${q.wrappedKey} AS wrapped, ${q.kekId} AS kek
       FROM ${q.table}${filter} ORDER BY random() LIMIT $1`,
      matters === null ? [size] : [size, matters],
    );
    for (const row of rows) {
      sample.push({ table: table.name, key: row.key, matter: row.matter, token: row.token, wrappedKey: row.wrapped, kekArn: row.kek });
    }
  }
  return sample;
}
