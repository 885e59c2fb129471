import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded.js';

let embedded: EmbeddedDatabase | undefined;

/**
 * Uses the PostgreSQL server named by DATABASE_URL, or starts an embedded
 * one when it is unset, and hands its URL to every test file.
 */
export async function setup(project: TestProject): Promise<void> {
  let url = process.env.DATABASE_URL;
  if (url === undefined || url === '') {
    embedded = await startEmbeddedPostgres();
    url = embedded.url;
  }
  process.env.REWRAP_TEST_ADMIN_URL = url;
  project.provide('adminDatabaseUrl', url);
}

export async function teardown(): Promise<void> {
  await embedded?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    adminDatabaseUrl: string;
  }
}
