//! Password hashing (argon2id) with memory that is bounded and allocated once.
//!
//! Each argon2id hash needs [`Params::DEFAULT`]'s 19 MiB of working memory (19,456
//! blocks of 1 KiB, 2 passes, one lane). Letting every hash allocate its own on the
//! blocking pool does not bound the memory of a replica: the pool's threads come and
//! go, each 19 MiB buffer is freed into the allocator's per-thread arenas, and a login
//! burst left replicas at gigabytes that were never returned.
//!
//! So a replica hashes on a fixed set of threads ([`hashing_threads`]: one per CPU, at
//! most [`limits::CONCURRENT_PASSWORD_HASHES`]), each owning one block buffer that it
//! allocates at its first hash and reuses for every later one. The memory hashing can
//! ever use is `threads x 19 MiB`, held from the first hashes on, whatever the load;
//! calls beyond the threads wait in a queue (in arrival order), and a call whose caller
//! went away is skipped rather than hashed.
//!
//! Hashes are standard PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), so
//! hashes made before this module, by the `argon2` crate's own `hash_password`, verify
//! unchanged.

use std::sync::{Arc, Mutex, PoisonError, mpsc};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString},
};
use rand::RngCore;
use tokio::sync::oneshot;
use tonic::Status;

use crate::config::limits;

/// The largest argon2 memory cost (in 1 KiB blocks) a stored hash may ask for: a
/// corrupt or hostile hash must not make a thread allocate without bound.
const MAX_STORED_M_COST: u32 = 64 * 1024;

/// How many threads hash passwords: one per CPU, at most
/// [`limits::CONCURRENT_PASSWORD_HASHES`] (more threads than CPUs only add memory).
pub fn hashing_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, limits::CONCURRENT_PASSWORD_HASHES)
}

/// Work for a hashing thread: runs with the thread's block buffer.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashes and verifies passwords on [`hashing_threads`] dedicated threads. Cheap to
/// clone; the threads end when the last clone is dropped.
#[derive(Clone)]
pub struct PasswordHasherPool {
    jobs: mpsc::Sender<Job>,
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        Self::new(hashing_threads())
    }
}

impl PasswordHasherPool {
    /// A pool of `threads` hashing threads (at least one).
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{index}"))
                .spawn(move || work(&queue));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password hashing thread");
            }
        }
        Self { jobs }
    }

    /// Hashes a password into an argon2id PHC string with a fresh random salt.
    pub async fn hash(&self, password: &str) -> Result<String, Status> {
        let password = password.to_owned();
        self.run(move |memory| hash(password.as_bytes(), memory))
            .await
    }

    /// Whether `password` matches a stored PHC string.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, Status> {
        let (password, phc) = (password.to_owned(), phc.to_owned());
        self.run(move |memory| verify(password.as_bytes(), &phc, memory))
            .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let (done, result) = oneshot::channel();
        let queued = std::time::Instant::now();
        let job: Job = Box::new(move |memory| {
            ::metrics::histogram!(crate::metrics::PASSWORD_HASH_WAIT_SECONDS)
                .record(queued.elapsed());
            // The caller gave up (its call was cancelled): spare the CPU.
            if done.is_closed() {
                return;
            }
            let _ = done.send(work(memory));
        });
        self.jobs
            .send(job)
            .map_err(|_| Status::unavailable("password hashing is unavailable"))?;
        result
            .await
            .map_err(|_| Status::internal("password hashing failed"))?
    }
}

/// A hashing thread: takes jobs in arrival order until the pool is dropped.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = Vec::new();
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(&mut memory),
            Err(mpsc::RecvError) => return,
        }
    }
}

/// `memory` with room for `params`, growing it (once) if need be.
fn blocks<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    let needed = params.block_count();
    if memory.len() < needed {
        memory.resize(needed, Block::default());
    }
    &mut memory[..needed]
}

fn failed(what: &'static str, error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "{what}");
    Status::internal(what)
}

fn hash(password: &[u8], memory: &mut Vec<Block>) -> Result<String, Status> {
    let params = Params::DEFAULT;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut output, blocks(memory, &params))
        .map_err(|error| failed("password hashing failed", error))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| failed("password hashing failed", e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| failed("password hashing failed", e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&output).map_err(|e| failed("password hashing failed", e))?),
    };
    Ok(phc.to_string())
}

fn verify(password: &[u8], phc: &str, memory: &mut Vec<Block>) -> Result<bool, Status> {
    let malformed =
        |error: &dyn std::fmt::Display| failed("stored password hash is malformed", error);
    let parsed = PasswordHash::new(phc).map_err(|e| malformed(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| malformed(&e))?;
    let version = match parsed.version {
        Some(version) => Version::try_from(version).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| malformed(&e))?;
    if params.m_cost() > MAX_STORED_M_COST {
        return Err(malformed(&"its memory cost is above the limit"));
    }
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(malformed(&"no salt or no hash"));
    };
    let mut salt_bytes = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| malformed(&e))?;
    let mut output = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(password, salt, &mut output, blocks(memory, &params))
        .map_err(|error| failed("password verification failed", error))?;
    // `Output`'s equality is constant-time.
    let computed = Output::new(&output).map_err(|e| malformed(&e))?;
    Ok(computed == expected)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher;

    use super::*;

    #[tokio::test]
    async fn password_hashes_are_argon2id_and_verify() {
        let pool = PasswordHasherPool::new(2);
        let phc = pool.hash("correct horse").await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(pool.verify("correct horse", &phc).await.expect("verify"));
        assert!(!pool.verify("wrong horse", &phc).await.expect("verify"));
        assert_ne!(
            phc,
            pool.hash("correct horse").await.expect("hash"),
            "salted"
        );
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_itself_still_verify() {
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let phc = Argon2::default()
            .hash_password(b"an older password", &salt)
            .expect("hash")
            .to_string();
        let pool = PasswordHasherPool::new(1);
        assert!(
            pool.verify("an older password", &phc)
                .await
                .expect("verify")
        );
        assert!(!pool.verify("another password", &phc).await.expect("verify"));
    }

    #[tokio::test]
    async fn malformed_or_greedy_stored_hashes_are_refused() {
        let pool = PasswordHasherPool::new(1);
        for phc in [
            "not a hash",
            "$argon2id$v=19$m=1048576,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let error = pool.verify("password", phc).await.expect_err(phc);
            assert_eq!(error.code(), tonic::Code::Internal, "{phc}");
        }
    }

    #[test]
    fn one_thread_per_cpu_at_most_the_limit() {
        let threads = hashing_threads();
        assert!((1..=limits::CONCURRENT_PASSWORD_HASHES).contains(&threads));
    }
}
