//! The server's SQLite database: results (immutable once written, with their files as blobs),
//! job records, and the model-fingerprint index (so a model is hashed once, not per job).
//!
//! WAL journal with `synchronous = FULL`: a result's transaction is on disk before its id is
//! handed out, so killing the server (even `kill -9`) loses no committed result and leaves no
//! half-written row.
//!
//! A result never changes, but it can be removed, by whoever holds its delete token or by the
//! retention policy; its id is then remembered as removed (with why), so its share link
//! answers 410 Gone instead of 404.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    model       TEXT NOT NULL,   -- JSON: the model's fingerprint
    request     TEXT NOT NULL,   -- JSON: the job request as submitted
    argv        TEXT NOT NULL,   -- JSON: the command line it corresponds to
    report      TEXT NOT NULL    -- JSON: every JSON file the command wrote, by name
) STRICT;
CREATE TABLE IF NOT EXISTS result_files (
    result_id   TEXT NOT NULL REFERENCES results(id),
    name        TEXT NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (result_id, name)
) STRICT;
CREATE TRIGGER IF NOT EXISTS results_are_immutable BEFORE UPDATE ON results
BEGIN SELECT RAISE(ABORT, 'results are immutable'); END;
CREATE TRIGGER IF NOT EXISTS result_files_are_immutable BEFORE UPDATE ON result_files
BEGIN SELECT RAISE(ABORT, 'results are immutable'); END;
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    request     TEXT NOT NULL,
    state       TEXT NOT NULL,   -- queued, running, succeeded, failed, cancelled
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    error       TEXT,
    result_id   TEXT REFERENCES results(id)
) STRICT;
CREATE TABLE IF NOT EXISTS removed_results (
    id          TEXT PRIMARY KEY,
    removed_at  TEXT NOT NULL,
    reason      TEXT NOT NULL    -- deleted (by its owner) or expired (retention)
) STRICT;
CREATE TABLE IF NOT EXISTS model_fingerprints (
    path        TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    fingerprint TEXT NOT NULL    -- JSON: architecture, dimensions, SHA-256 of the files
) STRICT;
";

/// A finished job's result, as written.
#[derive(Debug, Clone)]
pub struct NewResult {
    pub id: String,
    pub kind: String,
    pub model: Value,
    pub request: Value,
    pub argv: Vec<String>,
    pub report: Value,
    pub files: Vec<(String, Vec<u8>)>,
    /// SHA-256 (hex) of the token that may delete it.
    pub delete_token_sha256: String,
}

/// A stored result, without its blobs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredResult {
    pub id: String,
    /// The job kind that produced it.
    pub kind: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Fingerprint of the model the job ran on.
    #[schema(value_type = Object)]
    pub model: Value,
    /// The job request as submitted.
    #[schema(value_type = Object)]
    pub request: Value,
    /// The command line the job corresponds to (inline inputs shown by size).
    pub argv: Vec<String>,
    /// Every JSON report the command wrote, by file name: metrics, plot data, completions.
    #[schema(value_type = Object)]
    pub report: Value,
    /// The other files (directions, figures), downloadable from `files/{name}`.
    pub files: Vec<ResultFile>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResultFile {
    pub name: String,
    pub bytes: u64,
}

/// A job as recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    /// queued, running, succeeded, failed or cancelled.
    pub state: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub result_id: Option<String>,
}

/// Columns added after the first release, added to a database that lacks them.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // SHA-256 (hex) of the result's delete token; NULL for results stored before tokens.
    ("results", "delete_token", "TEXT"),
    // When a cancel was asked for: a job a crash then interrupted is recorded as cancelled.
    ("jobs", "cancel_requested_at", "TEXT"),
];

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, ty) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |row| row.get(0),
        )?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
        }
    }
    Ok(())
}

/// Why a result is no longer stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// By whoever held its delete token.
    Deleted,
    /// By the server's retention policy (age or total size).
    Expired,
}

impl Removal {
    fn name(self) -> &'static str {
        match self {
            Removal::Deleted => "deleted",
            Removal::Expired => "expired",
        }
    }
}

/// A result the store holds, or what became of it.
#[derive(Debug, Clone)]
pub enum Lookup<T> {
    Found(T),
    Removed { reason: String, removed_at: String },
    Missing,
}

impl<T> Lookup<T> {
    pub fn found(self) -> Option<T> {
        match self {
            Lookup::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// A stored result as retention weighs it.
#[derive(Debug, Clone)]
pub struct ResultSize {
    pub id: String,
    pub created_at: String,
    /// Its rows: request, argv, report, files, and the records of the jobs that made it.
    pub bytes: u64,
}

pub struct Store {
    conn: Mutex<Connection>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    ///
    /// A file that is not a SQLite database, or one that cannot be written.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        // Pages freed by removed results are given back to the file system after each sweep
        // (takes effect on a new database; an older one reuses its free pages instead).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .and_then(|()| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| conn.busy_timeout(std::time::Duration::from_secs(10)))
            .and_then(|()| conn.execute_batch(SCHEMA))
            .and_then(|()| add_missing_columns(&conn))
            .with_context(|| format!("setting up the database {}", path.display()))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a result and its files in one transaction.
    ///
    /// # Errors
    ///
    /// An id that exists already (results never change) and database errors.
    pub fn insert_result(&self, r: &NewResult) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO results (id, kind, created_at, model, request, argv, report, delete_token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.id,
                r.kind,
                now(),
                r.model.to_string(),
                r.request.to_string(),
                serde_json::to_string(&r.argv)?,
                r.report.to_string(),
                r.delete_token_sha256,
            ],
        )
        .with_context(|| format!("storing result {}", r.id))?;
        for (name, bytes) in &r.files {
            tx.execute(
                "INSERT INTO result_files (result_id, name, bytes) VALUES (?1, ?2, ?3)",
                params![r.id, name, bytes],
            )?;
        }
        tx.commit().context("committing a result")?;
        Ok(())
    }

    /// # Errors
    ///
    /// Database errors and unreadable JSON.
    pub fn result(&self, id: &str) -> Result<Lookup<StoredResult>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT kind, created_at, model, request, argv, report FROM results WHERE id = ?1",
                params![id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((kind, created_at, model, request, argv, report)) = row else {
            return removal(&conn, id);
        };
        let mut stmt = conn.prepare(
            "SELECT name, length(bytes) FROM result_files WHERE result_id = ?1 ORDER BY name",
        )?;
        let files = stmt
            .query_map(params![id], |row| {
                Ok(ResultFile {
                    name: row.get(0)?,
                    bytes: row.get(1)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Lookup::Found(StoredResult {
            id: id.to_owned(),
            kind,
            created_at,
            model: serde_json::from_str(&model)?,
            request: serde_json::from_str(&request)?,
            argv: serde_json::from_str(&argv)?,
            report: serde_json::from_str(&report)?,
            files,
        }))
    }

    /// The results of `kind` that `request` made (compared as JSON with the request as
    /// submitted), newest first, each with its model's fingerprint.
    ///
    /// # Errors
    ///
    /// Database errors; a stored fingerprint that is not JSON.
    pub fn results_of_request(&self, kind: &str, request: &Value) -> Result<Vec<(String, Value)>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, model, request FROM results WHERE kind = ?1 \
             ORDER BY created_at DESC, rowid DESC",
        )?;
        let rows = statement.query_map(params![kind], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut found = Vec::new();
        for row in rows {
            let (id, model, made_by) = row?;
            if serde_json::from_str::<Value>(&made_by).ok().as_ref() == Some(request) {
                found.push((id, serde_json::from_str(&model)?));
            }
        }
        Ok(found)
    }

    /// One file of a result (`Missing` when the result has no file of that name).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn result_file(&self, id: &str, name: &str) -> Result<Lookup<Vec<u8>>> {
        let conn = self.conn();
        let bytes = conn
            .query_row(
                "SELECT bytes FROM result_files WHERE result_id = ?1 AND name = ?2",
                params![id, name],
                |row| row.get(0),
            )
            .optional()?;
        match bytes {
            Some(b) => Ok(Lookup::Found(b)),
            None => removal(&conn, id),
        }
    }

    /// The SHA-256 (hex) of a result's delete token: `Found(None)` for a result stored
    /// before there were tokens.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn delete_token(&self, id: &str) -> Result<Lookup<Option<String>>> {
        let conn = self.conn();
        let token = conn
            .query_row(
                "SELECT delete_token FROM results WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()?;
        match token {
            Some(t) => Ok(Lookup::Found(t)),
            None => removal(&conn, id),
        }
    }

    /// Removes a result, its files and the records of the jobs that made it, in one
    /// transaction, remembering its id as removed. Returns false when there was none.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn remove_result(&self, id: &str, why: Removal) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM jobs WHERE result_id = ?1", params![id])?;
        tx.execute("DELETE FROM result_files WHERE result_id = ?1", params![id])?;
        let removed = tx.execute("DELETE FROM results WHERE id = ?1", params![id])? > 0;
        if removed {
            tx.execute(
                "INSERT OR REPLACE INTO removed_results (id, removed_at, reason) VALUES (?1, ?2, ?3)",
                params![id, now(), why.name()],
            )?;
        }
        tx.commit()
            .with_context(|| format!("removing result {id}"))?;
        Ok(removed)
    }

    /// Whether a result with this id is stored.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn has_result(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM results WHERE id = ?1", params![id], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Every stored result with the bytes it takes, oldest first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn result_sizes(&self) -> Result<Vec<ResultSize>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT r.id, r.created_at,
                    length(r.request) + length(r.argv) + length(r.report)
                    + coalesce((SELECT sum(length(f.bytes)) FROM result_files f
                                WHERE f.result_id = r.id), 0)
                    + coalesce((SELECT sum(length(j.request)) FROM jobs j
                                WHERE j.result_id = r.id), 0)
             FROM results r ORDER BY r.created_at, r.id",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok(ResultSize {
                    id: row.get(0)?,
                    created_at: row.get(1)?,
                    bytes: row.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Bytes the records of finished jobs without a result take (failed and cancelled ones).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn resultless_job_bytes(&self) -> Result<u64> {
        Ok(self.conn().query_row(
            "SELECT coalesce(sum(length(request) + coalesce(length(error), 0)), 0) FROM jobs
             WHERE result_id IS NULL AND state NOT IN ('queued', 'running')",
            [],
            |row| row.get(0),
        )?)
    }

    /// Removes the records of finished jobs without a result that ended before `cutoff`
    /// (RFC 3339, UTC), or, with `None`, the oldest half of them. Returns how many.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn remove_resultless_jobs(&self, cutoff: Option<&str>) -> Result<usize> {
        let finished = "result_id IS NULL AND state NOT IN ('queued', 'running')";
        let conn = self.conn();
        Ok(match cutoff {
            Some(cutoff) => conn.execute(
                &format!("DELETE FROM jobs WHERE {finished} AND finished_at < ?1"),
                params![cutoff],
            )?,
            None => conn.execute(
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {finished}
                     ORDER BY finished_at LIMIT (SELECT (count(*) + 1) / 2 FROM jobs
                     WHERE {finished}))"
                ),
                [],
            )?,
        })
    }

    /// Gives the pages removed rows left back to the file system (a database created with
    /// incremental auto-vacuum; otherwise they are reused by later rows).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn release_free_pages(&self) -> Result<()> {
        self.conn().execute_batch("PRAGMA incremental_vacuum")?;
        Ok(())
    }

    /// Every file of a result, by name.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn result_files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, bytes FROM result_files WHERE result_id = ?1 ORDER BY name")?;
        let files = stmt
            .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(files)
    }

    /// Records a newly queued job.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn insert_job(&self, id: &str, kind: &str, request: &Value) -> Result<()> {
        self.conn().execute(
            "INSERT INTO jobs (id, kind, request, state, created_at) VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![id, kind, request.to_string(), now()],
        )?;
        Ok(())
    }

    /// # Errors
    ///
    /// Database errors.
    pub fn set_job_running(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET state = 'running' WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Records how a job ended.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn finish_job(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
        result_id: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, error = ?3, result_id = ?4, finished_at = ?5 WHERE id = ?1",
            params![id, state, error, result_id, now()],
        )?;
        Ok(())
    }

    /// # Errors
    ///
    /// Database errors.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, kind, state, created_at, finished_at, error, result_id FROM jobs WHERE id = ?1",
                params![id],
                |row| {
                    Ok(JobRecord {
                        id: row.get(0)?,
                        kind: row.get(1)?,
                        state: row.get(2)?,
                        created_at: row.get(3)?,
                        finished_at: row.get(4)?,
                        error: row.get(5)?,
                        result_id: row.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// Remembers that a job was asked to stop, so that a crash before it stops still records
    /// it as cancelled.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn request_cancel(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET cancel_requested_at = ?2 WHERE id = ?1 AND cancel_requested_at IS NULL",
            params![id, now()],
        )?;
        Ok(())
    }

    /// Marks jobs that a previous server process left queued or running as failed (or
    /// cancelled, when a cancel had been asked for); returns how many there were.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn fail_unfinished_jobs(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE jobs SET finished_at = ?1,
                 state = CASE WHEN cancel_requested_at IS NULL THEN 'failed' ELSE 'cancelled' END,
                 error = CASE WHEN cancel_requested_at IS NULL
                     THEN 'the server stopped before the job finished; submit it again' END
             WHERE state IN ('queued', 'running')",
            params![now()],
        )?)
    }

    /// The fingerprint remembered for a model whose files have this total size and newest
    /// modification time.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn fingerprint(&self, path: &str, size: u64, mtime_ns: i64) -> Result<Option<Value>> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT fingerprint FROM model_fingerprints
                 WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![path, size, mtime_ns],
                |row| row.get(0),
            )
            .optional()?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// # Errors
    ///
    /// Database errors.
    pub fn remember_fingerprint(
        &self,
        path: &str,
        size: u64,
        mtime_ns: i64,
        fingerprint: &Value,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO model_fingerprints (path, size, mtime_ns, fingerprint)
             VALUES (?1, ?2, ?3, ?4)",
            params![path, size, mtime_ns, fingerprint.to_string()],
        )?;
        Ok(())
    }
}

/// `Removed` when the result `id` was removed, else `Missing`.
fn removal<T>(conn: &Connection, id: &str) -> Result<Lookup<T>> {
    let row = conn
        .query_row(
            "SELECT reason, removed_at FROM removed_results WHERE id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((reason, removed_at)) => Lookup::Removed { reason, removed_at },
        None => Lookup::Missing,
    })
}
