import type { TestProject } from 'vitest/node';
import { databaseFromEnvironment, type DatabaseHandle } from '../src/db/embedded.js';

let database: DatabaseHandle | undefined;

/**
 * Uses the PostgreSQL server named by DATABASE_URL, or starts an embedded
 * one when it is unset, and hands its URL to every test file.
 */
export async function setup(project: TestProject): Promise<void> {
  database = await databaseFromEnvironment();
  process.env.REWRAP_TEST_ADMIN_URL = database.url;
  project.provide('adminDatabaseUrl', database.url);
}

export async function teardown(): Promise<void> {
  await database?.close();
}

declare module 'vitest' {
  export interface ProvidedContext {
    adminDatabaseUrl: string;
  }
}
