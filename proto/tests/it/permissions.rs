//! The services' broker users, with exactly the rights `proto::topology`
//! gives them: the adder may publish through its exchange (bound to the
//! queue) and nothing else, not even to a queue by name through the default
//! exchange; the
//! totaler may consume from it and reject to the dead-letter queue, and
//! nothing else; neither may declare, redeclare or delete a queue. Both
//! start through `topology::open`, which falls back to a passive check.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Connection,
    options::{
        BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use proto::topology;

use crate::support::{self, Broker};

#[tokio::test]
async fn restricted_users_can_do_only_their_part_on_rabbitmq_3() {
    only_their_part(&support::broker3()).await;
}

#[tokio::test]
async fn restricted_users_can_do_only_their_part_on_rabbitmq_4() {
    only_their_part(&support::broker4()).await;
}

#[tokio::test]
async fn restricted_user_cannot_start_before_the_admin_created_the_queue() {
    let broker = support::broker3();
    let queue = support::unique_queue("missing");
    let (user, password) = (
        format!("adder-{queue}"),
        uuid::Uuid::new_v4().simple().to_string(),
    );
    broker
        .add_user(&user, &password, &topology::adder_permissions())
        .await;
    let opened = topology::open(&broker.url_of(&user, &password), &queue).await;
    broker.delete_user(&user).await;
    let Err(error) = opened else {
        panic!("no queue: the passive check must fail")
    };
    assert!(
        error.to_string().contains("NOT_FOUND") || format!("{error:?}").contains("NOTFOUND"),
        "{error:?}"
    );
}

async fn only_their_part(broker: &Broker) {
    let admin = broker.connect().await;
    let queue = support::unique_queue("permissions");
    topology::declare(&admin.create_channel().await.expect("channel"), &queue)
        .await
        .expect("the admin declares the topology");
    let exchange = format!("{queue}.fanout");
    bind_an_exchange(&admin, &exchange, &queue).await;
    let password = uuid::Uuid::new_v4().simple().to_string();
    let (adder, totaler) = (format!("adder-{queue}"), format!("totaler-{queue}"));
    broker
        .add_user(
            &adder,
            &password,
            &topology::adder_permissions_through(&exchange),
        )
        .await;
    broker
        .add_user(&totaler, &password, &topology::totaler_permissions(&queue))
        .await;

    // The checks run in a task, so that the users go even when one fails.
    let adder_url = broker.url_of(&adder, &password);
    let totaler_url = broker.url_of(&totaler, &password);
    let (checked_queue, checked_exchange) = (queue.clone(), exchange.clone());
    let checks = tokio::spawn(async move {
        adder_only_publishes(&adder_url, &checked_queue, &checked_exchange).await;
        totaler_only_consumes(&totaler_url, &checked_queue).await;
    })
    .await;
    broker.delete_user(&adder).await;
    broker.delete_user(&totaler).await;
    let channel = admin.create_channel().await.expect("channel");
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    if let Err(failed) = checks {
        support::delete_topology(&admin, &queue).await;
        std::panic::resume_unwind(failed.into_panic());
    }
    let dead = topology::dead_letter_queue(&queue);
    assert_eq!(
        support::count(&admin, &dead).await,
        1,
        "the totaler's reject dead-lettered"
    );
    assert_eq!(support::count(&admin, &queue).await, 0);
    support::delete_topology(&admin, &queue).await;
}

/// Declares the fanout `exchange` (as the admin step declares
/// `tally.fanout`) and binds `queue` to it.
async fn bind_an_exchange(admin: &Connection, exchange: &str, queue: &str) {
    let channel = admin.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare the exchange");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");
}

async fn adder_only_publishes(url: &str, queue: &str, exchange: &str) {
    let (connection, channel) = topology::open(url, queue).await.expect("the adder starts");
    assert!(
        support::publish_through(&channel, exchange, "", b"{}")
            .await
            .expect("publish"),
        "publish through its exchange acked"
    );
    // Not to a queue by name through the default exchange: the queue it
    // feeds, its dead letters, or any other queue of the vhost.
    for target in [queue.to_owned(), topology::dead_letter_queue(queue)] {
        let by_name =
            async |c: &lapin::Channel| support::publish(c, &target, b"{}").await.map(drop);
        refused(&connection, "publish through the default exchange", by_name).await;
    }
    let consume = async |c: &lapin::Channel| {
        c.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop)
    };
    refused(&connection, "consume", consume).await;
    forbidden_for_both(&connection, queue).await;
}

async fn totaler_only_consumes(url: &str, queue: &str) {
    let (connection, channel) = topology::open(url, queue)
        .await
        .expect("the totaler starts");
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the totaler consumes");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("a delivery")
        .expect("a delivery");
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    // A publish error closes the channel asynchronously: wait for the confirm.
    let publish = async |c: &lapin::Channel| support::publish(c, queue, b"{}").await.map(drop);
    refused(&connection, "publish", publish).await;
    forbidden_for_both(&connection, queue).await;
    let _ = channel.close(200, "done".into()).await;
}

/// Deleting the queue, declaring another, redeclaring it with other arguments.
async fn forbidden_for_both(connection: &Connection, queue: &str) {
    let delete = async |c: &lapin::Channel| {
        c.queue_delete(queue.into(), Default::default())
            .await
            .map(drop)
    };
    refused(connection, "delete the queue", delete).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let other = format!("{queue}.other");
    let declare = async |c: &lapin::Channel| {
        c.queue_declare(other.as_str().into(), durable, FieldTable::default())
            .await
            .map(drop)
    };
    refused(connection, "declare another queue", declare).await;
    let redeclare = async |c: &lapin::Channel| {
        c.queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .map(drop)
    };
    refused(connection, "redeclare with other arguments", redeclare).await;
    let active = async |c: &lapin::Channel| topology::declare(c, queue).await;
    refused(connection, "declare the topology", active).await;
}

/// Runs `what` on a fresh channel and requires ACCESS_REFUSED.
async fn refused<F>(connection: &Connection, what: &str, attempt: F)
where
    F: AsyncFnOnce(&lapin::Channel) -> lapin::Result<()>,
{
    let channel = connection.create_channel().await.expect("channel");
    match attempt(&channel).await {
        Ok(()) => panic!("{what}: allowed, must be refused"),
        Err(e) => assert!(
            topology::is_access_refused(&e),
            "{what}: {e:?}, expected ACCESS_REFUSED"
        ),
    }
}
