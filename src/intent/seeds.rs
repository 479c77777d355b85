#![doc = include_str!("../../docs/seed-coverage.md")]
