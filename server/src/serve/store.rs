//! The server's SQLite database: results (immutable once written, with their files as blobs),
//! job records, and the model-fingerprint index (so a model is hashed once, not per job).
//!
//! WAL journal with `synchronous = FULL`: a result's transaction is on disk before its id is
//! handed out, so killing the server (even `kill -9`) loses no committed result and leaves no
//! half-written row.

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
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| conn.pragma_update(None, "foreign_keys", "ON"))
            .and_then(|()| conn.busy_timeout(std::time::Duration::from_secs(10)))
            .and_then(|()| conn.execute_batch(SCHEMA))
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
            "INSERT INTO results (id, kind, created_at, model, request, argv, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.id,
                r.kind,
                now(),
                r.model.to_string(),
                r.request.to_string(),
                serde_json::to_string(&r.argv)?,
                r.report.to_string(),
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
    pub fn result(&self, id: &str) -> Result<Option<StoredResult>> {
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
            return Ok(None);
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
        Ok(Some(StoredResult {
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

    /// One file of a result.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn result_file(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT bytes FROM result_files WHERE result_id = ?1 AND name = ?2",
                params![id, name],
                |row| row.get(0),
            )
            .optional()?)
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

    /// Marks jobs that a previous server process left queued or running as failed; returns
    /// how many there were.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn fail_unfinished_jobs(&self) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE jobs SET state = 'failed', finished_at = ?1,
                 error = 'the server stopped before the job finished; submit it again'
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
