//! Expansion snapshots: what each macro generates for a small input, pretty-printed, so a
//! change to the generated code shows up as a readable diff in review (`src/snapshots/`).
//! Accept an intended change with `INSTA_UPDATE=always cargo test -p dionysus-macros` and
//! read the diff.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("the expansion is not a file of items ({error}):\n{tokens}"),
    }
}

#[test]
fn publishable_with_a_field_partition_key() {
    let input = quote! {
        #[derive(Publishable)]
        #[diesel(table_name = rentals)]
        #[publish(topic = "v3_rentals", partition_key = account_id)]
        pub struct Rental {
            pub id: i64,
            pub account_id: i64,
            #[diesel(column_name = r#type)]
            pub kind: String,
        }
    };
    insta::assert_snapshot!(pretty(crate::publish::derive(input)));
}

#[test]
fn publishable_with_every_option() {
    let input = quote! {
        #[derive(Publishable)]
        #[diesel(table_name = schema::rentals, primary_key(uid))]
        #[publishable(model_name = "Rentals::Rental", soft_delete = false)]
        #[publish(topic = topics::Rentals, with(BookingsFee), serializer = NameOnly,
                  observe(Account, columns(default_check_in_time), via = account_id))]
        #[publish(topic = "v3_rentals_by_name", partition_key_with = keys::by_name)]
        pub struct Rental {
            pub uid: String,
            pub account_id: Option<i64>,
        }
    };
    insta::assert_snapshot!(pretty(crate::publish::derive(input)));
}

#[test]
fn publishable_with_a_mistake_is_the_error_and_a_stub() {
    let input = quote! {
        #[derive(Publishable)]
        #[publish(topic = "v3_rentals", partition_key = acount_id)]
        pub struct Rental {
            pub id: i64,
            pub account_id: i64,
        }
    };
    insta::assert_snapshot!(pretty(crate::publish::derive(input)));
}

#[test]
fn replica() {
    let input = quote! {
        #[derive(Consume)]
        #[diesel(table_name = replicated_rentals)]
        #[consume(topic = "v3_rentals", model = "Rental", soft_delete = synced_canceled_at)]
        pub struct ReplicatedRental {
            pub synced_id: i64,
            pub synced_updated_at: Option<DateTime<Utc>>,
            pub synced_canceled_at: Option<DateTime<Utc>>,
            #[consume(from = "daily_price")]
            pub price: Price,
            pub synced_data: Option<serde_json::Value>,
            #[consume(skip)]
            pub note: Option<String>,
        }
    };
    insta::assert_snapshot!(pretty(crate::consume::derive(input)));
}

#[test]
fn replica_with_a_mistake_is_the_error_and_a_placeholder() {
    let input = quote! {
        #[derive(Consume)]
        #[diesel(table_name = replicated_rentals)]
        #[consume(topic = "v3_rentals", model = "Rental", synced_updated_at = "remote_updated_at")]
        pub struct ReplicatedRental {
            pub synced_id: i64,
            pub remote_updatd_at: Option<DateTime<Utc>>,
        }
    };
    insta::assert_snapshot!(pretty(crate::consume::derive(input)));
}

#[test]
fn topic() {
    let args = quote!(namespace = "v3", name = "rentals", partition_key = account_id, partitions = 12, genesis_replica);
    let item = quote!(
        pub struct Rentals;
    );
    insta::assert_snapshot!(pretty(crate::topic::expand(args, item)));
}

#[test]
fn topic_with_a_mistake_is_the_error_the_struct_and_a_placeholder() {
    let args = quote!(namespace = "v3", name = "rentals", partitions = 0);
    let item = quote!(
        pub struct Rentals;
    );
    insta::assert_snapshot!(pretty(crate::topic::expand(args, item)));
}

#[test]
fn handler() {
    let args = quote!(topic = "v3_rentals", event = "rental_updated");
    let item = quote! {
        async fn notify(event: &ConsumedEvent) -> dionysus::Result<()> {
            Ok(())
        }
    };
    insta::assert_snapshot!(pretty(crate::handler::expand(args, item)));
}
