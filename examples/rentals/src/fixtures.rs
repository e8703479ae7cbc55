//! The producer's fixture for the testing kit's publishable contract
//! (`dionysus::testing::publishable_contract`): every step goes through the service's own
//! functions ([`crate::producer`]), so the contract checks what the service really writes —
//! not what the outbox writer would write if it were called.
//!
//! An application keeps such fixtures next to its models (behind a test-support feature if it
//! wants them out of its release build); the example always builds them.

use diesel_async::AsyncPgConnection;
use dionysus::testing::{FixtureError, PublishableFixture};

use crate::producer::{self, Rental};

impl PublishableFixture for Rental {
    async fn create(conn: &mut AsyncPgConnection) -> Result<Self, FixtureError> {
        let account = producer::create_account(conn, "Fixture Stays", "15:00").await?;
        Ok(producer::create_rental(conn, &account, "Fixture Loft", 10_000).await?)
    }

    async fn update(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        Ok(producer::rename_rental(conn, rental.id, "Fixture Loft with a view").await?)
    }

    async fn soft_delete(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        Ok(producer::cancel_rental(conn, rental.id).await?)
    }

    async fn restore(conn: &mut AsyncPgConnection, rental: &Self) -> Result<Self, FixtureError> {
        Ok(producer::restore_rental(conn, rental.id).await?)
    }

    async fn destroy(conn: &mut AsyncPgConnection, rental: Self) -> Result<(), FixtureError> {
        producer::destroy_rental(conn, rental.id).await?;
        Ok(())
    }
}
