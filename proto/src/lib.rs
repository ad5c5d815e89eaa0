//! Generated gRPC types, clients and servers of econsult.
//!
//! This is the only crate that holds prost types; services convert them into their own domain
//! types at the gRPC boundary (`TryFrom<proto::X>`), so nothing below the adapter sees prost.

pub mod codec;

/// The encoded `FileDescriptorSet` of every econsult proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/econsult_descriptor.bin"));

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("econsult.audit.v1");
    }
}

pub mod booking {
    pub mod v1 {
        tonic::include_proto!("econsult.booking.v1");
    }
}

pub mod consultation {
    pub mod v1 {
        tonic::include_proto!("econsult.consultation.v1");
    }
}

pub mod proxy {
    pub mod v1 {
        tonic::include_proto!("econsult.proxy.v1");
    }
}

pub mod signalling {
    pub mod v1 {
        tonic::include_proto!("econsult.signalling.v1");
    }
}

pub mod stats {
    pub mod v1 {
        tonic::include_proto!("econsult.stats.v1");
    }
}

pub mod notify {
    pub mod v1 {
        tonic::include_proto!("econsult.notify.v1");
    }
}
